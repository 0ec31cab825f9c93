"""Per-device collective bytes, FLOPs and peak memory of the compiled CoRA training step on meshes of
1-8 (or more) simulated CPU devices: nothing is allocated and nothing runs. The sharded step of
cora_jax.train.mesh is lowered on abstract, sharded inputs (cora_jax.train.memory.abstract_step)
and compiled; the compiled HLO gives the collectives (cora_jax.train.hlo: bytes of each all-gather,
reduce-scatter, all-reduce, all-to-all and collective-permute, times the trip counts of the scanned
layer loop), compiled.cost_analysis() and the HLO's dots the FLOPs, compiled.memory_analysis() the peak.

Shapes are kept short so a compile is affordable on a CPU: batch = devices x --rows-per-device rows of
--seq tokens (default 1 x 128), rank 16 on q/k/v/o, bfloat16 LLM. Default meshes (data, fsdp, tensor):
1: 1x1x1; N in 2, 4, 8: fsdp N, data N, tensor N; 4: 2x2x1; 8: 2x4x1 and 1x4x2.

    nice -n 15 .venv/bin/python bench/scaling.py --json results/scaling.json --md results/scaling.md
    nice -n 15 .venv/bin/python bench/scaling.py --llm llama2_7b --meshes 1,8,1 2,8,1 --seq 256 --json s256.json

Numbers are what XLA's CPU backend emits; see docs/scaling.md for where a GPU compile differs (the CPU
backend has no reduce-scatter creation and no all-reduce reassociation, and promotes bfloat16
all-reduces to float32).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time

DEFAULT_MESHES = ["1,1,1", "1,2,1", "2,1,1", "1,1,2", "1,4,1", "4,1,1", "1,1,4", "2,2,1",
                  "1,8,1", "8,1,1", "1,1,8", "2,4,1", "1,4,2"]
MB = 1e6


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", nargs="+", default=["smollm2_135m", "llama2_7b"], help="smollm2_135m | llama2_7b (random-weight shapes)")
    ap.add_argument("--meshes", nargs="+", default=DEFAULT_MESHES, help="data,fsdp,tensor triples")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rows-per-device", type=int, default=1, help="batch = devices x this")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--remat", default="none", choices=("none", "full", "dots"))
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--targets", default="qkvo")
    ap.add_argument("--json", help="write the records here")
    ap.add_argument("--md", help="write the markdown table here")
    return ap.parse_args(argv)


def measure(llm: str, mesh: tuple[int, int, int], args) -> dict:
    """Compile one step and read its collectives, FLOPs and memory (per device)."""
    import jax

    from bench_train import model_flops  # bench/ is on sys.path when a script here runs
    from cora_jax.cora import TARGET_PRESETS
    from cora_jax.train import hlo
    from cora_jax.train.memory import MemoryRequest, abstract_step, llm_config

    n = math.prod(mesh)
    batch = n * args.rows_per_device
    req = MemoryRequest(llm=llm, batch=batch, seq=args.seq, dtype=args.dtype, remat=args.remat, rank=args.rank,
                        targets=args.targets, mesh=mesh)
    t0 = time.time()
    compiled = abstract_step(req)["lowered"].compile()
    compile_s = time.time() - t0
    text = compiled.as_text()
    colls = hlo.collectives(text, n)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    ma = compiled.memory_analysis()
    mem = {k: int(getattr(ma, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
    mem["peak"] = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"]
    cfg = llm_config(llm, args.dtype, args.remat)
    rec = {
        "llm": llm, "dtype": args.dtype, "remat": args.remat, "mesh": list(mesh), "devices": n, "batch": batch,
        "seq": args.seq, "rank": args.rank, "targets": args.targets, "compile_s": round(compile_s, 1),
        "collectives": hlo.collective_totals(colls),
        "ops": [{"kind": c.kind, "bytes": c.result_bytes, "group": c.group, "count": c.count, "span": c.span,
                 "op": c.op_name[-120:]} for c in colls if c.group > 1],
        "flops": {"xla_cost_analysis": float(cost.get("flops", 0.0)), "hlo_dots": hlo.dot_flops(text),
                  "model": model_flops(cfg, TARGET_PRESETS[args.targets], args.rank, batch, args.seq) / n},
        "memory": mem,
    }
    del compiled, text
    jax.clear_caches()
    gc.collect()
    return rec


def table(records: list[dict]) -> str:
    from cora_jax.train.hlo import COLLECTIVES

    head = ("| LLM | mesh d x f x t | batch x seq | " + " | ".join(COLLECTIVES)
            + " | dot FLOPs (HLO) | model FLOPs | XLA cost_analysis | peak memory | compile |")
    lines = [head, "|" + "---|" * (9 + len(COLLECTIVES) - 1)]
    for r in records:
        cells = []
        for k in COLLECTIVES:
            c = r["collectives"][k]
            cells.append("-" if not c["ops"] else f"{c['result_bytes'] / MB:,.1f} / {c['wire_bytes'] / MB:,.1f}")
        f = r["flops"]
        lines.append(f"| {r['llm']} | {' x '.join(map(str, r['mesh']))} | {r['batch']} x {r['seq']} | " + " | ".join(cells)
                     + f" | {f['hlo_dots'] / 1e12:.3f} T | {f['model'] / 1e12:.3f} T | {f['xla_cost_analysis'] / 1e12:.3f} T"
                     + f" | {r['memory']['peak'] / 2**30:.2f} GiB | {r['compile_s']:.0f} s |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = parse(argv)
    meshes = [tuple(int(x) for x in m.split(",")) for m in args.meshes]
    need = max(math.prod(m) for m in meshes)
    # before jax starts: the simulated devices and the CPU backend
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={need}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    records = []
    for llm in args.llm:
        for mesh in meshes:
            rec = measure(llm, mesh, args)
            records.append(rec)
            print(table([rec]).splitlines()[-1], flush=True)
            if args.json:  # after every compile, so a long sweep keeps what it has
                with open(args.json, "w") as f:
                    json.dump(records, f, indent=1)
    md = (f"Per device and step; collectives as result bytes / ring wire bytes in MB; {args.dtype}, rank {args.rank} "
          f"{args.targets}, remat {args.remat}; XLA CPU backend.\n\n" + table(records) + "\n")
    print("\n" + md)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)
    return records


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
