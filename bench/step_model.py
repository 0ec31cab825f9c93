"""Step-time model: compute at a stated efficiency plus the collectives at stated link bandwidths,
with stated overlap. Predicts the Vicuna-7B CoRA step on 1, 8, 16 and 128 H100s from what
bench/scaling.py measured on simulated CPU devices (per-device collective bytes, model FLOPs), and
applies the same model to Llama-2-7B pre-training (every weight trained) beside MaxText's figures.

    nice -n 15 .venv/bin/python bench/step_model.py results.json [--md out.md]

results.json: bench/scaling.py --llm llama2_7b --rows-per-device 8 --seq 256 on the meshes
1,1,1 1,8,1 8,1,1 2,8,1 16,1,1 (16 simulated devices). Those meshes give 1, 8 and 16 GPUs; 128 GPUs
(16 nodes) take the 16-device meshes' collectives with the groups that cross nodes widened from 2 to 16
nodes (fsdp x data) or from 16 to 128 devices (data), the per-device bytes being the same.

Model (per device; every figure below is an assumption, change it here):
  compute   model FLOPs / (EFFICIENCY x PEAK): the compute alone, communication excluded
  a collective   its ring wire bytes (cora_jax.train.hlo) / the bandwidth of the slowest link its group
            crosses: NVLink when the group stays inside one node of 8 GPUs, else the network
  overlap   collectives inside the scanned layer loop (FSDP weight gathers, per-layer gradient
            reductions) run under that loop's compute (XLA's latency-hiding scheduler; only what
            exceeds the compute shows); the rest (the gradients reduced after the backward pass, the
            embedding reshards) is exposed
  GPU vs CPU bytes  the CPU backend converts bfloat16 to float32 before every collective, so the
            in-loop gathers and reshards of LLM weights and activations count half on a GPU; the
            trainables and their gradients are float32 anyway. The CPU's all-reduce of FSDP-split
            gradients (a GPU makes it a reduce-scatter, half the bytes) is kept: an upper bound.
"""
from __future__ import annotations

import argparse
import json
import math

PEAK = 989e12                 # H100 SXM, dense bfloat16 FLOP/s
EFFICIENCY = 0.50             # compute alone; MaxText's 1-node Llama-2-7B reaches 492/989 with its collectives hidden
LINK_EFF = 0.8                # achieved / nominal bandwidth of a collective (NCCL bus bandwidth)
NVLINK = 450e9 * LINK_EFF     # bytes/s per GPU per direction inside a node
NETWORKS = {                  # bytes/s per GPU across nodes (8 GPUs per node, one rail each)
    "IB 8x400 Gb/s": 8 * 400e9 / 8 / 8 * LINK_EFF,
    "A3 High 1000 Gb/s": 1000e9 / 8 / 8 * LINK_EFF,   # GCP's a3-highgpu-8g (GPUDirect-TCPX), MaxText's numbers
}
GPUS_PER_NODE = 8
# Llama-2-7B pre-training as MaxText ran it (configs/a3/llama_2_7b): FSDP 8 in a node, data parallel across
# nodes, 4 rows x 4096 tokens per device, weights float32, gradients reduced in float32.
MAXTEXT = {1: 492, 2: 422, 4: 407, 8: 409, 16: 375}  # TFLOP/s per chip by nodes
LLAMA2_7B = dict(params=6.738e9, layers=32, d_model=4096, rows=4, seq=4096)


def wire(op: dict, widen: float = 1.0) -> tuple[float, bool]:
    """(GPU wire bytes per step, crosses nodes) of one measured collective; widen scales the group of
    a node-crossing one (more nodes, same per-device bytes)."""
    n = op["group"] * (widen if op["span"] > GPUS_PER_NODE else 1)
    size = op["bytes"] * (0.5 if op["count"] > 1 and op["kind"] != "all-reduce" else 1.0)
    factor = {"all-gather": (n - 1) / n, "reduce-scatter": n - 1, "all-reduce": 2 * (n - 1) / n,
              "all-to-all": (n - 1) / n, "collective-permute": 1.0}[op["kind"]]
    return factor * size * op["count"], op["span"] > GPUS_PER_NODE


def step(rec: dict, network: float, widen: float = 1.0) -> dict:
    """Predicted step of one measured mesh: compute, in-loop and exposed communication (seconds)."""
    t_compute = rec["flops"]["model"] / (EFFICIENCY * PEAK)
    t_loop = t_exposed = 0.0
    for op in rec["ops"]:
        b, crosses = wire(op, widen)
        t = b / (network if crosses else NVLINK)
        if op["count"] > 1:
            t_loop += t
        else:
            t_exposed += t
    total = t_compute + max(0.0, t_loop - t_compute) + t_exposed
    return {"compute": t_compute, "loop": t_loop, "exposed": t_exposed, "step": total,
            "no_overlap": t_compute + t_loop + t_exposed}


def cora_table(records: list[dict], network_name: str) -> str:
    by_mesh = {tuple(r["mesh"]): r for r in records}
    network = NETWORKS[network_name]
    rows = [(1, "1 GPU", (1, 1, 1), 1.0), (8, "FSDP 8", (1, 8, 1), 1.0), (8, "data 8", (8, 1, 1), 1.0),
            (16, "data 2 x FSDP 8", (2, 8, 1), 1.0), (16, "data 16", (16, 1, 1), 1.0),
            (128, "data 16 x FSDP 8", (2, 8, 1), 8.0), (128, "data 128", (16, 1, 1), 8.0)]
    r0 = records[0]
    out = [f"CoRA step, Vicuna-7B bfloat16, {r0['batch'] // math.prod(r0['mesh'])} rows x {r0['seq']} tokens per GPU, "
           f"network {network_name}; compute at {EFFICIENCY:.0%} of {PEAK / 1e12:.0f} TFLOP/s",
           "", "| GPUs | mesh | compute | in-loop comm (overlapped) | exposed comm | step | no overlap | samples/s | MFU | "
           "peak memory (CPU compile) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for gpus, label, mesh, widen in rows:
        if mesh not in by_mesh:
            continue
        rec = by_mesh[mesh]
        s = step(rec, network, widen)
        rows_per_gpu = rec["batch"] / math.prod(rec["mesh"])
        mfu = rec["flops"]["model"] / s["step"] / PEAK
        out.append(f"| {gpus} | {label} | {s['compute'] * 1e3:.0f} ms | {s['loop'] * 1e3:.0f} ms | {s['exposed'] * 1e3:.1f} ms | "
                   f"{s['step'] * 1e3:.0f} ms | {s['no_overlap'] * 1e3:.0f} ms | {gpus * rows_per_gpu / s['step']:,.0f} | "
                   f"{mfu:.1%} | {rec['memory']['peak'] / 2**30:.1f} GiB |")
    return "\n".join(out)


def pretrain_table() -> str:
    """Llama-2-7B pre-training under the same model, beside MaxText's published figures."""
    c = LLAMA2_7B
    tokens = c["rows"] * c["seq"]
    # 6 x params x tokens + attention 12 x L x T x d_model per token (MaxText's count, not halved for causality)
    flops = 6 * c["params"] * tokens + 12 * c["layers"] * c["seq"] * c["d_model"] * tokens
    t_compute = flops / (EFFICIENCY * PEAK)
    # in a node: bfloat16 weights gathered forward and backward, float32 gradients reduce-scattered (overlapped)
    t_node = (2 * 2 + 4) * c["params"] * (GPUS_PER_NODE - 1) / GPUS_PER_NODE / NVLINK
    out = [f"Llama-2-7B pre-training, {c['rows']} x {c['seq']} tokens per GPU, FSDP 8 per node, data parallel across nodes; "
           f"compute {t_compute:.2f} s at {EFFICIENCY:.0%}; in-node collectives {t_node * 1e3:.0f} ms (overlapped)", "",
           "| nodes | " + " | ".join(f"{n}: exposed / step / TFLOP/s per chip" for n in NETWORKS) + " | MaxText (A3 High) |",
           "|---|" + "---|" * (len(NETWORKS) + 1)]
    for nodes, published in MAXTEXT.items():
        cells = []
        for bw in NETWORKS.values():
            # across nodes: each GPU all-reduces its 1/8 (FSDP shard) of the float32 gradients over the nodes
            t_x = 2 * (nodes - 1) / nodes * 4 * c["params"] / GPUS_PER_NODE / bw
            t = t_compute + max(0.0, t_node - t_compute) + t_x
            cells.append(f"{t_x * 1e3:.0f} ms / {t:.2f} s / {flops / t / 1e12:.0f}")
        out.append(f"| {nodes} | " + " | ".join(cells) + f" | {published} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="bench/scaling.py --json output (llama2_7b at the real per-device shape)")
    ap.add_argument("--md", help="also write the tables here")
    args = ap.parse_args(argv)
    with open(args.results) as f:
        records = [r for r in json.load(f) if r["llm"] == "llama2_7b"]
    text = "\n\n".join([cora_table(records, "IB 8x400 Gb/s"), pretrain_table()]) + "\n"
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
