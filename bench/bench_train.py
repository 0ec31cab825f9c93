"""CoRA training-step throughput and model FLOPs utilisation (MFU) on the devices jax has.

The step is cora_jax's sharded train step (cora_jax.train.mesh: generator -> G, side branch on the
target projections of every layer, "Yes" logit, BCE, backward, AdamW on the trainables; the LLM
frozen), on a mesh over every device (--mesh DATA FSDP TENSOR; default: all of them on fsdp).
The LLM:
    --llm smollm2                 the embedded SmolLM2-135M weights, loaded straight into their shardings
    --llm PATH                    an HF model directory or a .gguf file, loaded the same way
    --llm smollm2_135m|llama2_7b  that shape (llama2_7b = Vicuna-7B) with random weights, created sharded
    --llm PATH/config.json        the shape an HF config.json gives, the same way
The batch: --batch rows of --seq random token ids (no padding), random CF embeddings and labels.

Model FLOPs of one step (what MFU counts; recompute under --remat is not counted):
    forward   2 x B x T x (projection weights)  +  attention 4 x L x B x T^2 x (heads x head_dim)
              + the side branch (x A once per projection input, (x A) B per target)
    backward  input gradients only for the projections (the LLM is frozen: no weight gradients),
              so the projections once more, attention and the side branch twice more
The generator (<1% of a step) and the one LM-head row are not counted. (XLA's cost_analysis is no
check of this: it counts the scanned layer body once.)
MFU = model FLOPs / step time / (devices x peak per device); the peak is --peak-tflops (H100 SXM,
bfloat16 dense: 989) or, without it, a jitted square matmul in the compute dtype timed in this run.

    .venv/bin/python bench/bench_train.py                 # SmolLM2 float32 on this machine's CPU
    python bench/bench_train.py --llm llama2_7b --dtype bfloat16 --batch 8 --seq 256 --peak-tflops 989
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cora_jax.batch import Batch
from cora_jax.cora import TARGET_PRESETS, TRAINABLE, CoRA, CoRAConfig, GeneratorConfig
from cora_jax.errors import entry_point
from cora_jax.llm import INPUT_OF, Llama, LlamaConfig, load_llm
from cora_jax.runtime import retain_freed_memory
from cora_jax.train import mesh as M
from cora_jax.train import steps as S
from cora_jax.train.setup import make_run_mesh
from cora_jax.train.memory import llm_config
from cora_jax.train.optim import OptimConfig, make_optimizer

from bench_llm import matmul_peak  # bench/ is on sys.path when a script here runs

CF_DIM = 256
RANDOM_SHAPES = ("smollm2_135m", "llama2_7b")  # --llm names that get random weights (cora_jax.train.memory.llm_config)


def parse(argv: list[str]):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", default="smollm2", help="smollm2 | PATH (HF dir or .gguf) | smollm2_135m | llama2_7b")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="LLM weights and compute")
    ap.add_argument("--remat", default="none", choices=("none", "full", "dots"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--targets", default="qkvo", choices=sorted(TARGET_PRESETS))
    ap.add_argument("--gen-layers", type=int, default=GeneratorConfig().num_layers, help="generator blocks (the paper's 8)")
    ap.add_argument("--mesh", type=int, nargs=3, metavar=("DATA", "FSDP", "TENSOR"), default=None,
                    help="axis sizes over every device (-1: the rest); default: all devices on fsdp")
    ap.add_argument("--warmup", type=int, default=4, help="untimed steps after the compile (CPU: heap pages fault in)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (their mean is reported)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="per-device peak; default: measured here")
    ap.add_argument("--attention", default="reference", choices=("reference", "dot_product"),
                    help="LlamaConfig.attention_impl (dot_product: cuDNN's fused kernel on a GPU)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    if args.warmup < 0 or args.steps < 1:
        ap.error("--warmup must be >= 0 and --steps >= 1")
    return args


def model_flops(cfg: LlamaConfig, targets: tuple[str, ...], rank: int, batch: int, seq: int) -> float:
    """Model FLOPs of one training step with the LLM frozen (see the module docstring)."""
    dims = cfg.target_dims()
    tokens = batch * seq
    projections = 2 * tokens * sum(i * o for i, o in dims.values())
    attention = 4 * batch * seq**2 * cfg.num_attention_heads * cfg.head_dim
    inputs = {INPUT_OF[t]: dims[t][0] for t in targets}  # CoRA: one x G product per input (cora_jax.cora.model)
    branch = 2 * tokens * rank * (sum(inputs.values()) + sum(dims[t][1] for t in targets))
    return cfg.num_hidden_layers * (2 * projections + 3 * attention + 3 * branch)


def frozen_llm(args, mesh) -> Llama:
    """The LLM with every weight already in its sharding on `mesh`."""
    if args.llm not in RANDOM_SHAPES and not args.llm.endswith(".json"):
        llm, _ = load_llm(None if args.llm == "smollm2" else args.llm, dtype=jnp.dtype(args.dtype), remat=args.remat,
                          progress=False, sharding_of=M.param_sharding_of(mesh))
        llm.config = llm.config.replace(attention_impl=args.attention)
        return llm
    cfg = llm_config(args.llm, args.dtype, args.remat).replace(attention_impl=args.attention)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0))))
    state = jax.jit(lambda: nnx.split(Llama(cfg, rngs=nnx.Rngs(0)))[1],
                    out_shardings=M.state_shardings(abstract, mesh))()
    return nnx.merge(graphdef, state)


@entry_point
def main(argv: list[str]):
    retain_freed_memory()  # as train.py/eval.py do, before jax starts its threads
    args = parse(argv)
    mesh = make_run_mesh(M.MeshConfig(*args.mesh) if args.mesh else M.MeshConfig(), batch_size=args.batch)
    shape = tuple(mesh.shape.values())

    llm = frozen_llm(args, mesh)
    cfg = llm.config
    model = CoRA(CoRAConfig(GeneratorConfig(num_layers=args.gen_layers), rank=args.rank, alpha=2.0 * args.rank,
                            targets=args.targets), llm, CF_DIM, 0, rngs=nnx.Rngs(1))
    graphdef, trainable, frozen = nnx.split(model, TRAINABLE, ...)
    tx = make_optimizer(OptimConfig())
    st = S.place(trainable, frozen, tx, mesh)
    step = S.make_sharded_train_step(S.loss_fn(graphdef), tx, st, mesh)
    rng = np.random.default_rng(0)
    B, T = args.batch, args.seq
    batch = M.shard_batch(Batch(
        rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32), np.ones((B, T), np.int32),
        label=rng.integers(0, 2, B).astype(np.float32), e_u=rng.standard_normal((B, CF_DIM)).astype(np.float32),
        e_i=rng.standard_normal((B, CF_DIM)).astype(np.float32)), mesh)
    keys = [jax.random.key(i) for i in range(args.warmup + args.steps + 1)]

    t0 = time.perf_counter()
    compiled = step.lower(st.trainable, st.opt_state, st.frozen, batch, keys[0]).compile()
    compile_s = time.perf_counter() - t0
    tr, opt = st.trainable, st.opt_state
    for key in keys[1: args.warmup + 1]:
        tr, opt, loss = compiled(tr, opt, st.frozen, batch, key)
        loss.block_until_ready()
    t0 = time.perf_counter()
    for key in keys[args.warmup + 1:]:  # dispatched back to back, as in training; each waits for the last
        tr, opt, loss = compiled(tr, opt, st.frozen, batch, key)
    loss = float(loss)
    step_s = (time.perf_counter() - t0) / args.steps

    if args.peak_tflops is None:
        peak, source = matmul_peak(4096 if jax.default_backend() != "cpu" else 2048, dtype=jnp.dtype(args.dtype)) / 1e3, \
            f"a {args.dtype} square matmul timed here"
    else:
        peak, source = args.peak_tflops, "--peak-tflops"
    flops = model_flops(cfg, TARGET_PRESETS[args.targets], args.rank, B, T)
    achieved = flops / step_s / mesh.size / 1e12
    print(f"{jax.devices()[0].device_kind} x{mesh.size}, mesh data x fsdp x tensor = {' x '.join(map(str, shape))}; "
          f"LLM {args.llm} ({cfg.num_params() / 1e9:.3f} B parameters), {args.dtype}, remat {args.remat}, "
          f"attention {args.attention}; "
          f"batch {B} x {T} tokens, rank {args.rank}, {args.targets}")
    print(f"compile {compile_s:.1f} s; step {step_s:.3f} s (mean of {args.steps} after {args.warmup} untimed; last loss "
          f"{loss:.4f}): {B / step_s:.2f} samples/s, {B * T / step_s:,.0f} tokens/s")
    print(f"model FLOPs per step {flops / 1e12:.3f} TFLOP; per device {achieved:.3f} TFLOP/s against a peak of "
          f"{peak:.3f} TFLOP/s ({source}): MFU {achieved / peak:.1%}")
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        print(f"device 0 allocator peak: {stats['peak_bytes_in_use'] / 2**30:.2f} GiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "devices": mesh.size, "llm": args.llm, "dtype": args.dtype,
                       "attention": args.attention, "batch": B, "seq": T, "compile_s": compile_s, "step_s": step_s,
                       "samples_per_s": B / step_s, "model_tflop_per_step": flops / 1e12, "peak_tflops": peak,
                       "mfu": achieved / peak, "peak_bytes_in_use": stats.get("peak_bytes_in_use")}, f, indent=1)


if __name__ == "__main__":
    main()
