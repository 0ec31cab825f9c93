"""LLM speed on this machine, SmolLM2 (embedded GGUF), a batch of real ML-1M prompts.

(a) score() with a per-sample rank-r q/k/v/o delta vs no delta        (target ratio <= 1.10)
(b) the side branch vs materialising W + scale * G P per sample        (target >= 3x faster)
(c) scoring throughput (samples/s) and the fraction of the float32 matmul peak measured here

Every ratio is measured in this one run. Timings are the median of --reps runs after a warm-up
compile, the variants timed round-robin; on a shared CPU they are noisy, so compare ratios, not
absolute numbers across runs.

    .venv/bin/python bench/bench_llm.py [--batch 8] [--rank 16] [--reps 5] [--data ../shared/data/ml-1m-collm]
"""
from __future__ import annotations

import argparse
import gzip
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cora_jax.errors import entry_point
from cora_jax.llm import LowRankDelta, load_llm
from cora_jax.runtime import retain_freed_memory

QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")


def ml1m_prompts(data: pathlib.Path, n: int) -> list[str]:
    """The first n test prompts (docs/reference.md#prompt); the data package's renderer when present."""
    try:
        from cora_jax.data import PromptConfig, load_dataset, split_prompts

        ds = load_dataset(data)
        return split_prompts(ds, ds["test"].take(np.arange(n)), PromptConfig(domain=ds.domain))
    except ImportError:
        out = []
        with gzip.open(data / "test.jsonl.gz", "rt") as f:
            for line in f:
                row = json.loads(line)
                titles = [t for t in row["his_title"] if t][-10:]
                items = ", ".join(f'"{t}"' for t in titles) if titles else "unkow"
                out.append("#Question: A user has given high ratings to the following movies: " + items
                           + f'. Leverage the information to predict whether the user would enjoy the movie titled '
                           f'"{row["title"].strip()}"? Answer with "Yes" or "No". \\n#Answer:')
                if len(out) == n:
                    break
        return out


def timed_interleaved(fns: list, reps: int) -> list[float]:
    """Median seconds of each function. After one warm-up call each (the compile), the timed calls go
    round-robin over the functions, so all see the same drift of a shared CPU's speed."""
    for fn in fns:
        jax.block_until_ready(fn())
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, out in zip(fns, times):
            t = time.perf_counter()
            jax.block_until_ready(fn())
            out.append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def matmul_peak(n: int = 2048, reps: int = 5, dtype=jnp.float32) -> float:
    """GFLOP/s of one jitted n x n matmul in `dtype` on the default device, now."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    return 2 * n**3 / timed_interleaved([lambda: f(a)], reps)[0] / 1e9


@entry_point
def main(argv: list[str]):
    retain_freed_memory()  # as train.py/eval.py do, before jax starts its threads
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--data", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parents[2] / "shared/data/ml-1m-collm")
    args = ap.parse_args(argv)

    model, tok = load_llm(None)
    cfg = model.config
    prompts = ml1m_prompts(args.data, args.batch)
    ids, mask = (jnp.asarray(x) for x in tok.batch(prompts))
    answer = jnp.array([tok.answer_token_id("Yes")])
    B, T = ids.shape
    dims = cfg.target_dims()
    k1, k2 = jax.random.split(jax.random.key(0))
    g = jax.random.normal(k1, (B, cfg.hidden_size, args.rank)) / np.sqrt(cfg.hidden_size * args.rank)  # unit-norm-ish G
    p = {t: 0.02 * jax.random.normal(jax.random.fold_in(k2, i), (cfg.num_hidden_layers, args.rank, dims[t][1]))
         for i, t in enumerate(QKVO)}
    scale = 2.0
    graphdef, state = nnx.split(model)

    @jax.jit
    def plain(state, ids, mask):
        return nnx.merge(graphdef, state).score(ids, mask, answer)

    @jax.jit
    def side_branch(state, ids, mask, g, p):
        delta = LowRankDelta(a={"attn_in": g, "attn_context": g}, b=p, scale=scale)  # one G for q/k/v/o: x G once per input
        return nnx.merge(graphdef, state).score(ids, mask, answer, delta)

    @jax.jit
    def materialised(state, ids, mask, g, p):
        # the naive alternative: every sample gets its own W + scale * G P in every layer
        def one(state, g_dr, ids_t, mask_t):
            m = nnx.merge(graphdef, state)  # merged inside vmap, so its kernels may be replaced here
            for t in QKVO:
                lin = getattr(m.model.layers.self_attn, t)
                lin.kernel.set_value(lin.kernel[...] + scale * jnp.einsum("dr,lro->ldo", g_dr, p[t]))
            return m.score(ids_t[None], mask_t[None], answer)[0]
        return jax.vmap(one, in_axes=(None, 0, 0, 0))(state, g, ids, mask)

    s_plain, s_side, s_mat = plain(state, ids, mask), side_branch(state, ids, mask, g, p), materialised(state, ids, mask, g, p)
    agree = float(jnp.max(jnp.abs(s_side - s_mat)))

    peak = matmul_peak()
    t_plain, t_side, t_mat = timed_interleaved([lambda: plain(state, ids, mask), lambda: side_branch(state, ids, mask, g, p),
                                                lambda: materialised(state, ids, mask, g, p)], args.reps)
    peak = max(peak, matmul_peak())  # measured before and after, the higher one is the machine's peak

    n_embed = cfg.vocab_size * cfg.hidden_size
    non_embed = cfg.num_params() - n_embed  # tied head: the embedding is counted once, never as matmul
    flops = 2 * non_embed * B * T  # padded tokens are computed too; attention scores not counted
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  batch {B}  padded length {T} "
          f"(real tokens {int(mask.sum())})  rank {args.rank}  reps {args.reps} (median)")
    print(f"float32 matmul peak (2048^3): {peak:.1f} GFLOP/s")
    print(f"score, no delta:               {t_plain * 1e3:8.1f} ms  {B / t_plain:6.2f} samples/s  "
          f"{flops / t_plain / 1e9:6.1f} GFLOP/s = {flops / t_plain / 1e9 / peak:.1%} of peak")
    print(f"score, side-branch qkvo delta: {t_side * 1e3:8.1f} ms  {B / t_side:6.2f} samples/s")
    print(f"score, materialised W+dW:      {t_mat * 1e3:8.1f} ms  {B / t_mat:6.2f} samples/s  (max |diff| vs side branch {agree:.2e})")
    print(f"(a) delta / no-delta time ratio: {t_side / t_plain:.3f}  (target <= 1.10)")
    print(f"(b) materialised / side-branch:  {t_mat / t_side:.2f}x  (target >= 3x)")
    if t_side - t_plain > 0.01 * t_plain:
        print(f"(b') added cost over no delta, materialised / side-branch: {(t_mat - t_plain) / (t_side - t_plain):.2f}x")
    else:  # the ratio of two differences within timing noise would be meaningless
        print(f"(b') added cost over no delta: materialised {(t_mat - t_plain) * 1e3:.1f} ms, side branch "
              f"{(t_side - t_plain) * 1e3:.1f} ms (under 1% of the step: not measurable, no ratio)")
    print(f"(c) throughput {B / t_plain:.2f} samples/s (no delta), {B / t_side:.2f} samples/s (delta); "
          f"{flops / t_plain / 1e9 / peak:.1%} of the measured float32 matmul peak")
    del s_plain


if __name__ == "__main__":
    main()
