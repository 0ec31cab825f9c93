"""Training speed of the CF backbones on ML-1M: epochs per second, measured in this run.

    python bench/bench_cf.py [--data DIR] [--epochs N] [--models mf lightgcn]

For each model: one warm-up epoch (compilation), then N timed epochs of (a) the jitted training
epoch alone and (b) a full trainer epoch (training + scoring the valid split + AUC/UAUC).
Prints one line per model and a final JSON line; not a test.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from cora_jax import metrics
from cora_jax.cf.frozen import split_batch
from cora_jax.cf.trainer import CFTrainConfig, CFTrainer
from cora_jax.data import load_dataset
from cora_jax.errors import entry_point

SETTINGS = {"mf": dict(lr=1e-3, wd=1e-4), "lightgcn": dict(lr=1e-2, wd=1e-4), "sasrec": dict(lr=1e-2, wd=1e-4)}


def bench(kind: str, ds, epochs: int) -> dict:
    cfg = CFTrainConfig(model=kind, **SETTINGS[kind])
    train, valid = ds["train"], ds["valid"]
    run = CFTrainer(cfg, ds)
    params, opt_state = run.params, run.opt_state
    vb = split_batch(valid, run.spec.seq_len)
    rng = np.random.default_rng(0)
    key = jax.random.key(0)

    def train_epoch(p, o):
        p, o, loss = run.epoch(p, o, rng, key)
        jax.block_until_ready(loss)
        return p, o

    def full_epoch(p, o):
        p, o = train_epoch(p, o)
        metrics.evaluate_split(valid, run.scores(p, vb))
        return p, o

    params, opt_state = full_epoch(params, opt_state)  # compile both paths
    timings = {}
    for name, fn in (("train_only", train_epoch), ("with_eval", full_epoch)):
        t0 = time.perf_counter()
        for _ in range(epochs):
            params, opt_state = fn(params, opt_state)
        timings[name] = epochs / (time.perf_counter() - t0)
    steps = -(-len(train) // cfg.batch_size)
    print(f"{kind:9s} train epochs/s {timings['train_only']:7.2f}   with valid eval {timings['with_eval']:7.2f}   "
          f"({steps} steps of {cfg.batch_size} rows, {len(valid)} valid rows)", flush=True)
    return {"model": kind, "epochs_per_s_train": round(timings["train_only"], 3),
            "epochs_per_s_with_eval": round(timings["with_eval"], 3), "steps_per_epoch": steps}


@entry_point
def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/ml-1m-collm")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--models", nargs="+", default=["mf", "lightgcn"], choices=sorted(SETTINGS))
    args = ap.parse_args(argv)
    ds = load_dataset(args.data)
    rows = [bench(kind, ds, args.epochs) for kind in args.models]
    print(json.dumps({"device": str(jax.devices()[0]), "data": args.data, "epochs": args.epochs, "results": rows}))


if __name__ == "__main__":
    main()
