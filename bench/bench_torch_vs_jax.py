"""CoRA step speed, cora_jax vs PyTorch eager, side by side in one run (same weights, batch, threads).

Both sides: SmolLM2-135M (embedded GGUF, loaded once by cora_jax and copied into transformers'
LlamaForCausalLM), a batch of real ML-1M train prompts, per-sample G [B, d, r] from the
Q-Former generator, side branch scale * (dropout(x) G) P_l on q/k/v/o of every layer, the "Yes"
logit at the last position only, BCE, backward, AdamW on the generator and P (LLM frozen).
PyTorch adds the branch by wrapping each q/k/v/o nn.Linear. The generator is the same
architecture on both sides (its weights are initialised independently: it is <1% of the FLOPs);
P is random (not 0) so that gradients reach the generator as after the first steps.
e_u/e_i are fixed random vectors (the CF model is outside the step on both sides).

Processes: each side runs in a child process of its own (jax, then torch, --rounds times), so
neither runtime's threads and allocations slow the other (2026-12-02, with both in one process:
the cora_jax training step 5.76 s, against a 4.69 s median alone); alternating the sides lets both
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

from cora_jax.runtime import retain_freed_memory  # noqa: E402

retain_freed_memory()  # as train.py does; torch's child gets the same malloc settings

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

from cora_jax.cora import TRAINABLE, CoRA, CoRAConfig  # noqa: E402
from cora_jax.llm import load_llm  # noqa: E402
from cora_jax.train import mesh as M  # noqa: E402
from cora_jax.train.optim import OptimConfig, make_optimizer  # noqa: E402

torch.set_num_threads(ARGS.threads)
QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")
CF_DIM = 256


def timed(fn, warmup: int, reps: int) -> tuple[list[float], list[int], object]:
    """Seconds and minor page faults of each of `reps` calls after `warmup` untimed calls, and the
    last output. The warm-up covers the jax compile and the first steps, whose new heap pages fault
    in (2026-12-02, cora_jax: 139k, 77k, 51k, 20k faults in the four steps after the first, then none)."""
    for _ in range(warmup):
        out = fn()
    times, faults = [], []
    for _ in range(reps):
        f0, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return times, faults, out


# ----------------------------------------------------------------------------------- torch side
class TAttention(torch.nn.Module):
    def __init__(self, hidden, kv_dim, heads, p, eps):
        super().__init__()
        self.h, self.p = heads, p
        self.query, self.key, self.value = (torch.nn.Linear(hidden, hidden), torch.nn.Linear(kv_dim, hidden),
                                            torch.nn.Linear(kv_dim, hidden))
        self.dense, self.norm = torch.nn.Linear(hidden, hidden), torch.nn.LayerNorm(hidden, eps=eps)

    def forward(self, x_bqh, kv_bkd):
        b, q, hid = x_bqh.shape
        split = lambda t: t.view(t.shape[0], t.shape[1], self.h, -1).transpose(1, 2)  # noqa: E731
        qh, kh, vh = split(self.query(x_bqh)), split(self.key(kv_bkd)), split(self.value(kv_bkd))
        probs = torch.softmax(qh @ kh.transpose(-1, -2) / (qh.shape[-1] ** 0.5), -1)
        ctx = (torch.nn.functional.dropout(probs, self.p, self.training) @ vh).transpose(1, 2).reshape(b, q, hid)
        return self.norm(torch.nn.functional.dropout(self.dense(ctx), self.p, self.training) + x_bqh)


class TGenerator(torch.nn.Module):
    """The Q-Former generator of cora-reference.md §5.2 (same layout as cora_jax.cora.generator)."""

    def __init__(self, gc, in_dim, d_model, rank):
        super().__init__()
        self.gc, self.d, self.r = gc, d_model, rank
        self.queries = torch.nn.Parameter(gc.init_std * torch.randn(gc.num_queries, gc.hidden))
        self.query_norm = torch.nn.LayerNorm(gc.hidden, eps=gc.ln_eps)
        self.blocks = torch.nn.ModuleList()
        for _ in range(gc.num_layers):
            blk = torch.nn.Module()
            blk.self_attn = TAttention(gc.hidden, gc.hidden, gc.num_heads, gc.dropout, gc.ln_eps)
            blk.cross_attn = TAttention(gc.hidden, in_dim, gc.num_heads, gc.dropout, gc.ln_eps)
            blk.inter, blk.out = torch.nn.Linear(gc.hidden, gc.ffn_dim), torch.nn.Linear(gc.ffn_dim, gc.hidden)
            blk.norm = torch.nn.LayerNorm(gc.hidden, eps=gc.ln_eps)
            self.blocks.append(blk)
        self.proj = torch.nn.Linear(gc.hidden, d_model * rank)

    def forward(self, cf_bd):
        kv = cf_bd[:, None]
        x = self.query_norm(self.queries.expand(cf_bd.shape[0], -1, -1))
        x = torch.nn.functional.dropout(x, self.gc.dropout, self.training)
        for blk in self.blocks:
            x = blk.cross_attn(blk.self_attn(x, x), kv)
            ffn = blk.out(torch.nn.functional.gelu(blk.inter(x)))
            x = blk.norm(torch.nn.functional.dropout(ffn, self.gc.dropout, self.training) + x)
        flat = torch.nn.functional.normalize(self.proj(x.mean(1)), dim=-1)
        return flat.view(-1, self.d, self.r)


class Branch:
    """Per-batch state shared by the wrapped projections: G [B, d, r]."""
    g: torch.Tensor | None = None


class LinearWithBranch(torch.nn.Module):
    """y = base(x) + scale * ((dropout(x) G) P): the CoRA side branch around a frozen nn.Linear."""

    def __init__(self, base: torch.nn.Linear, p_ro: torch.nn.Parameter, branch: Branch, scale: float, rate: float):
        super().__init__()
        self.base, self.p, self.branch, self.scale, self.rate = base, p_ro, branch, scale, rate

    def forward(self, x_btd):
        xd = torch.nn.functional.dropout(x_btd, self.rate, self.training)
        return self.base(x_btd) + torch.bmm(torch.bmm(xd, self.branch.g) * self.scale, self.p.expand(x_btd.shape[0], -1, -1))


def torch_llm(jax_llm) -> transformers.LlamaForCausalLM:
    """transformers' LlamaForCausalLM holding exactly cora_jax's weights (kernel [d_in, d_out] -> weight.T)."""
    c = jax_llm.config
    hf_cfg = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta}, tie_word_embeddings=c.tie_word_embeddings,
        max_position_embeddings=c.max_position_embeddings, attention_bias=False, mlp_bias=False)
    sd = {}
    m = jax_llm.model
    t = lambda x: torch.from_numpy(np.array(x, np.float32))  # noqa: E731
    sd["model.embed_tokens.weight"] = t(m.embed_tokens.embedding[...])
    sd["model.norm.weight"] = t(m.norm.weight[...])
    lay = m.layers
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        for name in QKVO:
            sd[p + f"self_attn.{name}.weight"] = t(getattr(lay.self_attn, name).kernel[...][i].T)
        for name in ("gate_proj", "up_proj", "down_proj"):
            sd[p + f"mlp.{name}.weight"] = t(getattr(lay.mlp, name).kernel[...][i].T)
        sd[p + "input_layernorm.weight"] = t(lay.input_layernorm.weight[...][i])
        sd[p + "post_attention_layernorm.weight"] = t(lay.post_attention_layernorm.weight[...][i])
    if not c.tie_word_embeddings:
        sd["lm_head.weight"] = t(jax_llm.lm_head.kernel[...].T)
    model = transformers.LlamaForCausalLM(hf_cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return model.eval().requires_grad_(False)


def setup(args) -> dict:
    """What both sides share: the LLM (cora_jax's load, copied into torch by the torch side), the batch,
    the CoRA config and the initial P."""
    from cora_jax.cora.model import projection_dims
    from cora_jax.data import PromptConfig, load_dataset, split_prompts

    llm, tok = load_llm(None)
    ds = load_dataset(args.data)
    split = ds["train"].take(np.arange(args.offset, args.offset + args.batch))
    ids, mask = tok.batch(split_prompts(ds, split, PromptConfig(domain=ds.domain)))
    B = ids.shape[0]
    rng = np.random.default_rng(0)
    batch = {"ids": ids, "mask": mask, "e_u": rng.standard_normal((B, CF_DIM)).astype(np.float32),
             "e_i": rng.standard_normal((B, CF_DIM)).astype(np.float32), "label": split.label.astype(np.float32)}
    ccfg = CoRAConfig(rank=args.rank, alpha=2.0 * args.rank)
    L = llm.config.num_hidden_layers
    p_init = {t: 0.02 * np.random.default_rng(i).standard_normal(
        (L, args.rank, projection_dims(llm.config, t)[1])).astype(np.float32) for i, t in enumerate(QKVO)}
    return dict(llm=llm, batch=batch, answer=tok.answer_token_id("Yes"), ccfg=ccfg, p_init=p_init)


def run_jax(args, llm, batch, answer, ccfg, p_init) -> dict:
    """The sharded steps of cora_jax.train.mesh on a 1-device mesh."""
    model = CoRA(ccfg, llm, CF_DIM, answer, rngs=nnx.Rngs(0))
    for t in QKVO:
        getattr(model.p, t).set_value(jnp.asarray(p_init[t]))
    mesh = M.make_mesh(M.MeshConfig(data=1, fsdp=1), devices=jax.devices()[:1])
    graphdef, trainable, frozen = nnx.split(model, TRAINABLE, ...)
    tx = make_optimizer(OptimConfig())
    st = M.place(trainable, frozen, tx, mesh)
    train_step = M.make_sharded_train_step(M.cora_loss_fn(graphdef, mesh), tx, st, mesh)
    eval_step = M.make_sharded_eval_step(M.cora_eval_fn(graphdef, mesh), st, mesh)
    jb = M.shard_batch(batch, mesh)
    state = {"tr": st.trainable, "opt": st.opt_state, "step": 0}

    def train():
        state["step"] += 1
        state["tr"], state["opt"], loss = train_step(state["tr"], state["opt"], st.frozen, jb,
                                                     jax.random.fold_in(jax.random.key(1), state["step"]))
        return float(loss)

    base = np.asarray(nnx.jit(lambda m, i, k: m.score(i, k, jnp.asarray([answer]))[:, 0])(llm, batch["ids"], batch["mask"]))
    train_s, train_pf, loss = timed(train, args.warmup, args.reps)
    eval_s, eval_pf, _ = timed(lambda: np.asarray(eval_step(state["tr"], st.frozen, jb)), args.warmup, args.reps)
    return dict(train_s=train_s, eval_s=eval_s, train_pf=train_pf, eval_pf=eval_pf, loss=loss, base=base.tolist(),
                tokens=[*map(int, batch["ids"].shape), int(batch["mask"].sum())])


def run_torch(args, llm, batch, answer, ccfg, p_init) -> dict:
    """transformers' LlamaForCausalLM with the same weights, the branch wrapped around q/k/v/o,
    generator + P trained with AdamW."""
    cfg = llm.config
    scale = ccfg.alpha / ccfg.rank
    B = batch["ids"].shape[0]
    tm = torch_llm(llm)
    branch = Branch()
    P = torch.nn.ParameterDict()
    for t in QKVO:
        for i, layer in enumerate(tm.model.layers):
            # one leaf parameter per (target, layer), as a torch port has (views of one tensor would alias)
            P[f"{t}_{i}"] = p_li = torch.nn.Parameter(torch.from_numpy(p_init[t][i].copy()))
            setattr(layer.self_attn, t, LinearWithBranch(getattr(layer.self_attn, t), p_li, branch, scale, ccfg.branch_dropout))
    gen = TGenerator(ccfg.generator, 2 * CF_DIM, cfg.hidden_size, args.rank)
    params = list(gen.parameters()) + list(P.values())
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-3)
    t_ids, t_mask = torch.from_numpy(batch["ids"]).long(), torch.from_numpy(batch["mask"]).long()
    pos = (t_mask.cumsum(-1) - 1).clamp(min=0)
    cf = torch.from_numpy(np.concatenate([batch["e_u"], batch["e_i"]], -1))
    label = torch.from_numpy(batch["label"])
    head_row = tm.model.embed_tokens.weight[answer]

    def last_hidden():
        return tm.model(input_ids=t_ids, attention_mask=t_mask, position_ids=pos).last_hidden_state[:, -1]  # final-normed

    def scores(train: bool):
        gen.train(train)
        tm.train(train)  # only the branch dropout reacts (LLM dropout rates are 0)
        branch.g = gen(cf)
        return last_hidden() @ head_row  # left padding: the last position is real; one LM-head row only

    def train():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(scores(True), label)
        loss.backward()
        opt.step()
        return loss.item()

    def evaluate():
        with torch.no_grad():
            return scores(False).numpy()

    with torch.no_grad():  # the base LLM's scores: G = 0 makes the branch add 0
        tm.eval()
        branch.g = torch.zeros(B, cfg.hidden_size, args.rank)
        base = (last_hidden() @ head_row).numpy()
    train_s, train_pf, loss = timed(train, args.warmup, args.reps)
    eval_s, eval_pf, _ = timed(evaluate, args.warmup, args.reps)
    return dict(train_s=train_s, eval_s=eval_s, train_pf=train_pf, eval_pf=eval_pf, loss=loss, base=base.tolist(), torch_threads=torch.get_num_threads())


def child(side: str) -> dict:
    """Run one side in a child process; its result is the JSON on the last line of its stdout."""
    cmd = [sys.executable, __file__, "--side", side, *sys.argv[1:]]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"the {side} child failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
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
