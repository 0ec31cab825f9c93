"""CoRA step speed, cora_jax vs PyTorch eager, side by side in one run (same weights, batch, threads).

Both sides: SmolLM2-135M (embedded GGUF, loaded once by cora_jax and copied into transformers'
LlamaForCausalLM), a batch of real ML-1M train prompts, per-sample G [B, d, r] from the
Q-Former generator, side branch scale * (dropout(x) G) P_l on q/k/v/o of every layer, the "Yes"
logit at the last position only, BCE with the learned offset, backward, AdamW on the generator,
P and the offset (LLM frozen). PyTorch is the port of bench/torch_cora.py, which wraps each q/k/v/o
nn.Linear (tests/test_torch_train_parity.py checks its step against cora_jax's). The generator is the same
architecture on both sides (its weights are initialised independently: it is <1% of the FLOPs);
P is random (not 0) so that gradients reach the generator as after the first steps.
e_u/e_i are fixed random vectors (the CF model is outside the step on both sides).

Processes: each side runs in a child process of its own (jax, then torch, --rounds times), so
neither runtime's threads and allocations slow the other (in one process they slowed cora_jax's
step); alternating the sides lets both
see the same drift of a shared CPU's speed. Each child runs --warmup untimed steps (the jax compile,
then the steps whose fresh heap pages still fault in) and --reps timed ones; the figures are
medians over every timed step of every round, with the page faults of the timed steps. The parent
checks that both children computed the same base "Yes" logits (same weights, same batch).

Threads: each child is pinned to --threads cores before jax or torch start, XLA's CPU pool
sizes itself from that affinity and torch.set_num_threads(--threads) matches it.

    .venv/bin/python bench/bench_torch_vs_jax.py [--batch 8] [--warmup 4] [--reps 3] [--rounds 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3, help="timed steps per side and round")
    ap.add_argument("--warmup", type=int, default=4, help="untimed steps before them (compile, heap growth)")
    ap.add_argument("--rounds", type=int, default=2, help="child processes per side, run alternately")
    ap.add_argument("--side", choices=("jax", "torch"), default=None, help=argparse.SUPPRESS)  # set for the children
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--offset", type=int, default=0, help="first train row of the batch")
    ap.add_argument("--data", type=pathlib.Path,
                    default=pathlib.Path(__file__).resolve().parents[2] / "shared/data/ml-1m-collm")
    args = ap.parse_args()
    if args.warmup < 1 or args.reps < 1:
        ap.error("--warmup and --reps must be at least 1 (the first step compiles)")
    return args


ARGS = parse()
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: ARGS.threads])  # before jax/torch create pools

from cora_jax.errors import EXIT_STATUS, UsageError, entry_point  # noqa: E402
from cora_jax.runtime import retain_freed_memory  # noqa: E402

retain_freed_memory()  # as train.py does; torch's child gets the same malloc settings

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch_cora  # noqa: E402
from flax import nnx  # noqa: E402

from cora_jax.batch import Batch  # noqa: E402
from cora_jax.cora import TRAINABLE, CoRA, CoRAConfig  # noqa: E402
from cora_jax.llm import load_llm  # noqa: E402
from cora_jax.train import mesh as M  # noqa: E402
from cora_jax.train import steps as S  # noqa: E402
from cora_jax.train.optim import OptimConfig, make_optimizer  # noqa: E402

torch.set_num_threads(ARGS.threads)
QKVO = torch_cora.QKVO
CF_DIM = 256


def timed(fn, warmup: int, reps: int) -> tuple[list[float], list[int], object]:
    """Seconds and minor page faults of each of `reps` calls after `warmup` untimed calls, and the
    last output. The warm-up covers the jax compile and the first steps, whose new heap pages still
    fault in (a few steps after the first; then none)."""
    for _ in range(warmup):
        out = fn()
    times, faults = [], []
    for _ in range(reps):
        f0, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return times, faults, out


def setup(args) -> dict:
    """What both sides share: the LLM (cora_jax's load, copied into torch by the torch side), the batch,
    the CoRA config and the initial P."""
    from cora_jax.data import PromptConfig, load_dataset, split_prompts

    llm, tok = load_llm(None)
    ds = load_dataset(args.data)
    split = ds["train"].take(np.arange(args.offset, args.offset + args.batch))
    ids, mask = tok.batch(split_prompts(ds, split, PromptConfig(domain=ds.domain)))
    B = ids.shape[0]
    rng = np.random.default_rng(0)
    batch = Batch(ids, mask, label=split.label.astype(np.float32), e_u=rng.standard_normal((B, CF_DIM)).astype(np.float32),
                  e_i=rng.standard_normal((B, CF_DIM)).astype(np.float32))
    ccfg = CoRAConfig(rank=args.rank, alpha=2.0 * args.rank)
    L = llm.config.num_hidden_layers
    p_init = {t: 0.02 * np.random.default_rng(i).standard_normal(
        (L, args.rank, llm.config.target_dims()[t][1])).astype(np.float32) for i, t in enumerate(QKVO)}
    return dict(llm=llm, batch=batch, answer=tok.answer_token_id("Yes"), ccfg=ccfg, p_init=p_init)


def run_jax(args, llm, batch, answer, ccfg, p_init) -> dict:
    """The sharded steps of cora_jax.train.mesh on a 1-device mesh."""
    model = CoRA(ccfg, llm, CF_DIM, answer, rngs=nnx.Rngs(0))
    for t in QKVO:
        getattr(model.p, t).set_value(jnp.asarray(p_init[t]))
    mesh = M.make_mesh(M.MeshConfig(data=1, fsdp=1), devices=jax.devices()[:1])
    graphdef, trainable, frozen = nnx.split(model, TRAINABLE, ...)
    tx = make_optimizer(OptimConfig())
    st = S.place(trainable, frozen, tx, mesh)
    train_step = S.make_sharded_train_step(S.loss_fn(graphdef), tx, st, mesh)
    eval_step = S.make_sharded_eval_step(S.eval_fn(graphdef), st, mesh)
    jb = M.shard_batch(batch, mesh)
    state = {"tr": st.trainable, "opt": st.opt_state, "step": 0}

    def train():
        state["step"] += 1
        state["tr"], state["opt"], loss = train_step(state["tr"], state["opt"], st.frozen, jb,
                                                     jax.random.fold_in(jax.random.key(1), state["step"]))
        return float(loss)

    base = np.asarray(nnx.jit(lambda m, i, k: m.score(i, k, jnp.asarray([answer]))[:, 0])(llm, batch.ids, batch.mask))
    train_s, train_pf, loss = timed(train, args.warmup, args.reps)
    eval_s, eval_pf, _ = timed(lambda: np.asarray(eval_step(state["tr"], st.frozen, jb)), args.warmup, args.reps)
    return dict(train_s=train_s, eval_s=eval_s, train_pf=train_pf, eval_pf=eval_pf, loss=loss, base=base.tolist(),
                tokens=[*map(int, batch.ids.shape), int(batch.mask.sum())])


def run_torch(args, llm, batch, answer, ccfg, p_init) -> dict:
    """The port of bench/torch_cora.py: transformers' LlamaForCausalLM with the same weights, the branch
    wrapped around q/k/v/o, generator + P + loss offset trained with the same AdamW and schedule."""
    model = torch_cora.TorchCoRA(llm, ccfg, CF_DIM, answer)
    model.load({f"p/{t}": p_init[t] for t in QKVO})
    ocfg = OptimConfig()
    opt = torch_cora.make_optimizer(model, ocfg)
    state = {"step": 0}

    def train():
        state["step"] += 1
        model.train()  # only the branch and generator dropouts react (LLM dropout rates are 0)
        loss = torch_cora.backward(model, batch)
        torch_cora.update(model, opt, ocfg, state["step"])
        return loss.item()

    def evaluate():
        model.eval()
        with torch.no_grad():
            return model.scores(batch).numpy()

    with torch.no_grad():  # the base LLM's scores: G = 0 makes the branch add 0
        model.eval()
        g0 = torch.zeros(batch.ids.shape[0], llm.config.hidden_size, args.rank)
        base = model.yes_logits(batch.ids, batch.mask, g0).numpy()
    train_s, train_pf, loss = timed(train, args.warmup, args.reps)
    eval_s, eval_pf, _ = timed(evaluate, args.warmup, args.reps)
    return dict(train_s=train_s, eval_s=eval_s, train_pf=train_pf, eval_pf=eval_pf, loss=loss, base=base.tolist(), torch_threads=torch.get_num_threads())


def child(side: str) -> dict:
    """Run one side in a child process; its result is the JSON on the last line of its stdout."""
    cmd = [sys.executable, __file__, "--side", side, *sys.argv[1:]]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode == EXIT_STATUS:  # the child refused its input in one line: pass that line on
        lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]  # not its progress bars
        raise UsageError(lines[-1].removeprefix("error: ") if lines else out.stderr.strip())
    if out.returncode != 0:
        sys.exit(f"the {side} child failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@entry_point
def main(argv: list[str]) -> None:  # argv: parsed at import already (ARGS), before jax and torch start
    args = ARGS
    if args.side is not None:
        run = run_jax if args.side == "jax" else run_torch
        print(json.dumps(run(args, **setup(args))))
        return
    rounds = []
    for r in range(args.rounds):
        rounds.append({side: child(side) for side in ("jax", "torch")})
        secs = {side: ", ".join(f"{t:.2f}" for t in rounds[-1][side]["train_s"]) for side in ("jax", "torch")}
        print(f"round {r + 1}/{args.rounds}: train steps cora_jax [{secs['jax']}] s, torch [{secs['torch']}] s", flush=True)
    res = {side: {k: sum((rd[side][k] for rd in rounds), []) for k in ("train_s", "eval_s", "train_pf", "eval_pf")}
           for side in ("jax", "torch")}
    same = max(float(np.abs(np.asarray(rd["jax"]["base"]) - np.asarray(rd["torch"]["base"])).max()) for rd in rounds)
    B, T, real = rounds[0]["jax"]["tokens"]
    print(f"SmolLM2-135M float32, batch {B} x {T} tokens (ML-1M train rows {args.offset}..{args.offset + B - 1}, "
          f"{real} real tokens), rank {args.rank}, qkvo, {args.threads} thread(s) each (torch "
          f"{rounds[0]['torch']['torch_threads']}), {args.rounds} round(s) x {args.reps} timed steps per side (median) "
          f"after {args.warmup} untimed")
    print(f"same weights: max |base 'Yes' logit torch - jax| = {same:.2e}")
    for step in ("train", "eval"):
        tj, tt = statistics.median(res["jax"][f"{step}_s"]), statistics.median(res["torch"][f"{step}_s"])
        print(f"{step:5s} step  cora_jax {tj:7.2f} s  {args.batch / tj:6.2f} samples/s   torch eager {tt:7.2f} s  "
              f"{args.batch / tt:6.2f} samples/s   ratio jax/torch {tt / tj:.2f}x")
        faults = {side: statistics.median(res[side][f"{step}_pf"]) for side in ("jax", "torch")}
        print(f"{'':11s} page faults per timed step (median): cora_jax {faults['jax']:.0f}, torch {faults['torch']:.0f}")
    print(f"last losses: cora_jax {rounds[-1]['jax']['loss']:.4f}, torch {rounds[-1]['torch']['loss']:.4f}")


if __name__ == "__main__":
    main()
