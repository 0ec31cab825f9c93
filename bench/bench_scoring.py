"""Throughput of CoRA scoring (the eval step) over the ML-1M test split with SmolLM2 on CPU.

Prompts are tokenised once, grouped into length buckets (sorted by length, cut into batches,
each padded to a multiple of --pad-multiple), and scored by the jitted sharded eval step of
cora_jax.train.mesh (generator -> G, side branch on q/k/v/o, one LM-head row). The last batch
is padded with repeats to a full batch (one shape per bucket). Reported: samples/s over the
whole run and excluding each shape's first (compiling) call, and the fraction of the FLOP limit
    2 x non-embedding params x tokens / measured float32 matmul peak
where the peak is a jitted 2048^3 matmul timed in this same run (before and after, the higher).
Tokens are the padded tokens actually computed; the real-token figure is printed too.

    .venv/bin/python bench/bench_scoring.py [--limit N] [--batch 32]
"""
from __future__ import annotations

import argparse
import pathlib
import time

import jax
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from cora_jax.batch import Batch
from cora_jax.cora import TRAINABLE, CoRA, CoRAConfig
from cora_jax.errors import entry_point
from cora_jax.llm import length_buckets, load_llm
from cora_jax.runtime import retain_freed_memory
from cora_jax.train import mesh as M
from cora_jax.train import steps as S

from bench_llm import matmul_peak  # bench/ is on sys.path when a script here runs

CF_DIM = 256


@entry_point
def main(argv: list[str]):
    retain_freed_memory()  # as train.py/eval.py do, before jax starts its threads
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="score only the first N test rows (default: all 7,331)")
    ap.add_argument("--batch", type=int, default=32, help="rows per scoring call (the reference's eval batch)")
    ap.add_argument("--pad-multiple", type=int, default=8, help="pad each bucket's length up to a multiple of this")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--data", type=pathlib.Path,
                    default=pathlib.Path(__file__).resolve().parents[2] / "shared/data/ml-1m-collm")
    args = ap.parse_args(argv)
    from cora_jax.data import PromptConfig, load_dataset, split_prompts

    llm, tok = load_llm(None)
    cfg = llm.config
    ds = load_dataset(args.data)
    split = ds["test"] if args.limit is None else ds["test"].take(np.arange(min(args.limit, len(ds["test"]))))
    rows = tok.encode_many(split_prompts(ds, split, PromptConfig(domain=ds.domain)))
    n = len(rows)
    lengths = np.array([len(r) for r in rows])
    rng = np.random.default_rng(0)
    e_u = rng.standard_normal((n, CF_DIM)).astype(np.float32)
    e_i = rng.standard_normal((n, CF_DIM)).astype(np.float32)

    model = CoRA(CoRAConfig(rank=args.rank, alpha=2.0 * args.rank), llm, CF_DIM, tok.answer_token_id("Yes"), rngs=nnx.Rngs(0))
    mesh = M.make_mesh(M.MeshConfig(data=1, fsdp=1), devices=jax.devices()[:1])
    graphdef, trainable, frozen = nnx.split(model, TRAINABLE, ...)
    st = S.place(trainable, frozen, optax.identity(), mesh)  # scoring: no optimiser state
    eval_step = S.make_sharded_eval_step(S.eval_fn(graphdef), st, mesh)

    peak = matmul_peak()
    scores = np.zeros(n, np.float32)
    seen_shapes: set[int] = set()
    t_all, t_steady, n_steady, padded, padded_steady, real = 0.0, 0.0, 0, 0, 0, int(lengths.sum())
    for idx in tqdm(length_buckets(lengths, args.batch), desc="scoring ML-1M test", unit="batch"):
        full = np.concatenate([idx, np.repeat(idx[-1:], args.batch - len(idx))])
        T = int(-(-lengths[full].max() // args.pad_multiple) * args.pad_multiple)
        ids = np.full((args.batch, T), tok.pad_id, np.int32)
        mask = np.zeros((args.batch, T), np.int32)
        for r, i in enumerate(full):
            ids[r, T - lengths[i]:], mask[r, T - lengths[i]:] = rows[i], 1
        b = M.shard_batch(Batch(ids, mask, e_u=e_u[full], e_i=e_i[full]), mesh)
        t = time.perf_counter()
        out = np.asarray(eval_step(st.trainable, st.frozen, b))
        dt = time.perf_counter() - t
        scores[idx] = out[: len(idx)]
        t_all += dt
        padded += args.batch * T
        if T in seen_shapes:
            t_steady, n_steady, padded_steady = t_steady + dt, n_steady + len(idx), padded_steady + args.batch * T
        seen_shapes.add(T)
    peak = max(peak, matmul_peak())

    non_embed = cfg.num_params() - cfg.vocab_size * cfg.hidden_size  # tied head: no full-vocab matmul
    flops = 2 * non_embed * padded
    print(f"ML-1M test rows scored: {n} (of {len(ds['test'])}), batch {args.batch}, {len(seen_shapes)} bucket shapes, "
          f"{real} real / {padded} padded tokens, finite scores: {bool(np.isfinite(scores).all())}")
    print(f"float32 matmul peak (2048^3, measured now): {peak:.1f} GFLOP/s")
    if n_steady:
        steady = f"{n_steady / t_steady:.2f} samples/s over {n_steady} rows"
        steady_fraction = f", {2 * non_embed * padded_steady / t_steady / 1e9 / peak:.1%} steady state"
    else:
        steady = "not measured: every bucket shape was scored once (more rows, e.g. a larger --limit)"
        steady_fraction = ""
    print(f"wall incl. compiles: {t_all:.1f} s = {n / t_all:.2f} samples/s; "
          f"steady state (each shape's first call excluded): {steady}")
    print(f"FLOP-limit fraction (2 x {non_embed / 1e6:.1f}M non-embedding params x padded tokens / peak): "
          f"{flops / t_all / 1e9 / peak:.1%} incl. compiles{steady_fraction}; "
          f"counting real tokens only: {2 * non_embed * real / t_all / 1e9 / peak:.1%} incl. compiles")


if __name__ == "__main__":
    main()
