"""Estimated peak device memory of one CoRA training step, without allocating the model.

Shapes come from `nnx.eval_shape` (no weights are created); the sharded train step of
cora_jax.train.mesh is lowered with abstract, sharded inputs and compiled, and XLA's
`memory_analysis()` of the compiled step gives the per-device bytes of arguments (frozen LLM
shard, trainables, optimiser state, batch), outputs, and temporaries (activations kept for the
backward pass, gathered weights, workspace). Peak ~= arguments + outputs - aliased (donated) +
temporaries.

    python -m cora_jax.train.memory --llm llama2_7b --batch 8 --seq 256 --dtype bfloat16 --mesh 1,1,1
    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python -m cora_jax.train.memory --llm llama2_7b --batch 8 --seq 256 --dtype bfloat16 --mesh 1,8,1

--llm is llama2_7b (= Vicuna-7B shape), smollm2_135m, or an HF config.json path. For an 8-device
figure on a CPU-only machine, simulate the devices with XLA_FLAGS as above (it must be set before
jax starts). Note: the figure is XLA's for the backend it was compiled on; the CPU backend may
keep some bfloat16 intermediates in float32, so a CPU-compiled bfloat16 figure is an upper bound
of what a GPU compile reports.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class MemoryRequest:
    llm: str = "llama2_7b"          # llama2_7b | smollm2_135m | path to an HF config.json
    batch: int = 8                  # training rows per step (global)
    seq: int = 256                  # tokens per row
    dtype: str = "bfloat16"         # frozen LLM weight + compute dtype; trainables stay float32
    remat: str = "none"             # per-layer rematerialisation: none | full | dots
    rank: int = 16                  # CoRA rank r
    targets: str = "qkvo"           # CoRA target preset
    cf_dim: int = 256               # CF embedding size (generator input = 2 x cf_dim)
    gen_layers: int = 8             # generator blocks (the paper's 8)
    mesh: tuple[int, int, int] = (1, 1, 1)  # (data, fsdp, tensor)


def llm_config(name: str, dtype: str, remat: str):
    from cora_jax.llm import LlamaConfig, llama2_7b, smollm2_135m

    presets = {"llama2_7b": llama2_7b, "smollm2_135m": smollm2_135m}
    overrides = dict(dtype=dtype, param_dtype=dtype, remat=remat)
    if name in presets:
        return presets[name](**overrides)
    return LlamaConfig.from_hf_json(name, **overrides)


def _bytes(tree) -> int:
    import jax
    import numpy as np

    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _per_device_bytes(tree, shardings) -> int:
    """Bytes one device holds of a tree placed with these shardings (largest shard per array)."""
    import jax
    import numpy as np

    total = 0
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        total += int(np.prod(s.shard_shape(x.shape))) * x.dtype.itemsize
    return total


def abstract_step(req: MemoryRequest, llm_cfg=None, generator=None) -> dict:
    """The sharded CoRA train step of `req` lowered on abstract, sharded inputs (nothing allocated):
    {"lowered", "trainable", "frozen", "opt_state" (abstract states), "shardings" (trainable, frozen,
    optimiser), "mesh"}. llm_cfg (a LlamaConfig) replaces req.llm/dtype/remat; generator (a
    GeneratorConfig) replaces the paper's."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from cora_jax.batch import Batch
    from cora_jax.cora import TRAINABLE, CoRA, CoRAConfig, GeneratorConfig
    from cora_jax.llm import Llama
    from cora_jax.train import mesh as M
    from cora_jax.train import steps as S
    from cora_jax.train.optim import OptimConfig, make_optimizer

    n_dev = int(np.prod(req.mesh))
    if len(jax.devices()) < n_dev:
        raise SystemExit(f"--mesh {req.mesh} needs {n_dev} devices but jax sees {len(jax.devices())}; on a CPU set "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count={n_dev} before starting python")
    if req.batch % (req.mesh[0] * req.mesh[1]):
        raise SystemExit(f"--batch {req.batch} is not divisible by data*fsdp = {req.mesh[0] * req.mesh[1]}")
    mesh = M.make_mesh(M.MeshConfig(*req.mesh), devices=jax.devices()[:n_dev])
    cfg = llm_config(req.llm, req.dtype, req.remat) if llm_cfg is None else llm_cfg
    cora_cfg = CoRAConfig(generator=generator or GeneratorConfig(num_layers=req.gen_layers), rank=req.rank,
                          alpha=2.0 * req.rank, targets=req.targets)

    abstract = nnx.eval_shape(lambda: CoRA(cora_cfg, Llama(cfg, rngs=nnx.Rngs(0)), req.cf_dim, 0, rngs=nnx.Rngs(1)))
    graphdef, trainable, frozen = nnx.split(abstract, TRAINABLE, ...)
    tx = make_optimizer(OptimConfig())
    opt_abs = jax.eval_shape(tx.init, trainable)
    tr_sh, fr_sh = M.state_shardings(trainable, mesh), M.state_shardings(frozen, mesh)
    opt_sh = M.opt_state_shardings(tx, opt_abs, tr_sh, mesh)
    st = S.ShardedState(trainable, frozen, opt_abs, tr_sh, fr_sh, opt_sh)
    bsh = M.batch_sharding(mesh)
    sds = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=bsh)  # noqa: E731
    batch = Batch(sds((req.batch, req.seq), jnp.int32), sds((req.batch, req.seq), jnp.int32),
                  label=sds((req.batch,), jnp.float32), e_u=sds((req.batch, req.cf_dim), jnp.float32),
                  e_i=sds((req.batch, req.cf_dim), jnp.float32))
    key = jax.eval_shape(lambda: jax.random.key(0))

    step = S.make_sharded_train_step(S.loss_fn(graphdef), tx, st, mesh)
    lowered = step.lower(S.abstract_with_shardings(trainable, tr_sh), S.abstract_with_shardings(opt_abs, opt_sh),
                         S.abstract_with_shardings(frozen, fr_sh), batch, key)
    return {"lowered": lowered, "trainable": trainable, "frozen": frozen, "opt_state": opt_abs,
            "shardings": (tr_sh, fr_sh, opt_sh), "mesh": mesh}


def estimate(req: MemoryRequest) -> dict:
    """Per-device memory figures (bytes) of a sharded CoRA train step for `req`."""
    import jax
    import numpy as np

    t0 = time.time()
    step = abstract_step(req)
    compiled = step["lowered"].compile()
    compile_s = time.time() - t0
    trainable, frozen, opt_abs = step["trainable"], step["frozen"], step["opt_state"]
    tr_sh, fr_sh, opt_sh = step["shardings"]
    n_dev = int(np.prod(req.mesh))
    ma = compiled.memory_analysis()
    xla = {k: int(getattr(ma, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                                             "temp_size_in_bytes", "generated_code_size_in_bytes")}
    peak = xla["argument_size_in_bytes"] + xla["output_size_in_bytes"] - xla["alias_size_in_bytes"] + xla["temp_size_in_bytes"]
    return {
        "request": dataclasses.asdict(req), "backend": jax.default_backend(), "devices": n_dev,
        "compile_s": round(compile_s, 1),
        "frozen_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(frozen))),
        "trainable_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(trainable))),
        "per_device": {
            "frozen_llm": _per_device_bytes(frozen, fr_sh),
            "trainables": _per_device_bytes(trainable, tr_sh),
            "optimizer_state": _per_device_bytes(opt_abs, opt_sh),
            "temporaries_(activations_etc)": xla["temp_size_in_bytes"],
            "peak_estimate": peak,
        },
        "totals_unsharded": {"frozen_llm": _bytes(frozen), "trainables": _bytes(trainable), "optimizer_state": _bytes(opt_abs)},
        "xla_memory_analysis": xla,
    }


def _print(res: dict) -> None:
    r = res["request"]
    print(f"CoRA train step memory: llm={r['llm']} batch={r['batch']} x {r['seq']} tokens, dtype={r['dtype']} "
          f"(trainables float32), remat={r['remat']}, rank={r['rank']} {r['targets']}, mesh (data,fsdp,tensor)={tuple(r['mesh'])}")
    print(f"  backend {res['backend']}, {res['devices']} device(s); compiled in {res['compile_s']} s")
    print(f"  parameters: frozen {res['frozen_params'] / 1e9:.3f} B, trainable {res['trainable_params'] / 1e6:.2f} M")
    for k, v in res["per_device"].items():
        print(f"  per device {k:32s} {v / GIB:8.3f} GiB")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m cora_jax.train.memory", description=__doc__.split("\n\n")[0])
    d = MemoryRequest()
    p.add_argument("--llm", default=d.llm, help="llama2_7b | smollm2_135m | path/to/config.json")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--seq", type=int, default=d.seq)
    p.add_argument("--dtype", default=d.dtype, choices=("float32", "bfloat16", "float16"))
    p.add_argument("--remat", default=d.remat, choices=("none", "full", "dots"))
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--targets", default=d.targets)
    p.add_argument("--cf-dim", type=int, default=d.cf_dim)
    p.add_argument("--gen-layers", type=int, default=d.gen_layers)
    p.add_argument("--mesh", default="1,1,1", help="data,fsdp,tensor sizes, e.g. 1,8,1")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    a = p.parse_args(argv)
    try:
        mesh = tuple(int(x) for x in a.mesh.split(","))
        assert len(mesh) == 3 and all(m >= 1 for m in mesh)
    except (ValueError, AssertionError):
        p.error(f"--mesh {a.mesh!r}: expected three positive integers data,fsdp,tensor")
    req = MemoryRequest(a.llm, a.batch, a.seq, a.dtype, a.remat, a.rank, a.targets, a.cf_dim, a.gen_layers, mesh)
    res = estimate(req)
    print(json.dumps(res, indent=2)) if a.json else _print(res)
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
