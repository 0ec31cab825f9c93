"""CoRA step speed, cora_jax vs PyTorch eager, side by side in one run (same weights, batch, threads).

Both sides: SmolLM2-135M (embedded GGUF, loaded once by cora_jax and copied into transformers'
LlamaForCausalLM), a batch of real ML-1M train prompts, per-sample G [B, d, r] from the
Q-Former generator, side branch scale * (dropout(x) G) P_l on q/k/v/o of every layer, the "Yes"
logit at the last position only, BCE, backward, AdamW on the generator and P (LLM frozen).
PyTorch adds the branch by wrapping each q/k/v/o nn.Linear. The generator is the same
architecture on both sides (its weights are initialised independently: it is <1% of the FLOPs);
P is random (not 0) so that gradients reach the generator as after the first steps.
e_u/e_i are fixed random vectors (the CF model is outside the step on both sides).

Threads: the process is pinned to --threads cores before jax and torch start, XLA's CPU pool
sizes itself from that affinity and torch.set_num_threads(--threads) matches it.

    .venv/bin/python bench/bench_torch_vs_jax.py [--batch 8] [--reps 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import time


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3, help="timed steps per side (median), after one warm-up step")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--offset", type=int, default=0, help="first train row of the batch")
    ap.add_argument("--data", type=pathlib.Path,
                    default=pathlib.Path(__file__).resolve().parents[2] / "shared/data/ml-1m-collm")
    return ap.parse_args()


ARGS = parse()
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: ARGS.threads])  # before jax/torch create pools

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


def timed(fn, reps: int) -> tuple[float, object]:
    out = fn()  # warm-up (compile on the jax side)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


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


def main():
    from cora_jax.data import PromptConfig, load_dataset, split_prompts

    args = ARGS
    llm, tok = load_llm(None)
    cfg = llm.config
    ds = load_dataset(args.data)
    split = ds["train"].take(np.arange(args.offset, args.offset + args.batch))
    ids, mask = tok.batch(split_prompts(ds, split, PromptConfig(domain=ds.domain)))
    B, T = ids.shape
    rng = np.random.default_rng(0)
    batch = {"ids": ids, "mask": mask, "e_u": rng.standard_normal((B, CF_DIM)).astype(np.float32),
             "e_i": rng.standard_normal((B, CF_DIM)).astype(np.float32), "label": split.label.astype(np.float32)}
    answer = tok.answer_token_id("Yes")
    ccfg = CoRAConfig(rank=args.rank, alpha=2.0 * args.rank)
    scale = ccfg.alpha / ccfg.rank

    # ---- jax: the sharded step of cora_jax.train.mesh on a 1-device mesh
    model = CoRA(ccfg, llm, CF_DIM, answer, rngs=nnx.Rngs(0))
    p_init = {t: 0.02 * np.random.default_rng(i).standard_normal(getattr(model.p, t).shape).astype(np.float32)
              for i, t in enumerate(QKVO)}
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

    def jax_train():
        state["step"] += 1
        state["tr"], state["opt"], loss = train_step(state["tr"], state["opt"], st.frozen, jb,
                                                     jax.random.fold_in(jax.random.key(1), state["step"]))
        return float(loss)

    jax_eval = lambda: np.asarray(eval_step(state["tr"], st.frozen, jb))  # noqa: E731

    # ---- torch: same LLM weights, branch wrapped around q/k/v/o, generator + P trained with AdamW
    tm = torch_llm(llm)
    branch = Branch()
    P = torch.nn.ParameterDict({t: torch.nn.Parameter(torch.from_numpy(p_init[t])) for t in QKVO})
    for i, layer in enumerate(tm.model.layers):
        for t in QKVO:
            p_li = torch.nn.Parameter(P[t].data[i])  # views of one [L, r, d_out] tensor per target would alias;
            P[f"{t}_{i}"] = p_li                     # one leaf parameter per (target, layer) is what a torch port does
            setattr(layer.self_attn, t, LinearWithBranch(getattr(layer.self_attn, t), p_li, branch, scale, ccfg.branch_dropout))
    for t in QKVO:
        del P[t]
    gen = TGenerator(ccfg.generator, 2 * CF_DIM, cfg.hidden_size, args.rank)
    params = list(gen.parameters()) + list(P.values())
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-3)
    t_ids, t_mask = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
    pos = (t_mask.cumsum(-1) - 1).clamp(min=0)
    cf = torch.from_numpy(np.concatenate([batch["e_u"], batch["e_i"]], -1))
    label = torch.from_numpy(batch["label"])
    head_row = tm.model.embed_tokens.weight[answer]

    def torch_scores(train: bool):
        gen.train(train)
        tm.train(train)  # only the branch dropout reacts (LLM dropout rates are 0)
        branch.g = gen(cf)
        h = tm.model(input_ids=t_ids, attention_mask=t_mask, position_ids=pos).last_hidden_state  # final-normed
        return h[:, -1] @ head_row  # left padding: the last position is real; one LM-head row only

    def torch_train():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(torch_scores(True), label)
        loss.backward()
        opt.step()
        return float(loss)

    def torch_eval():
        with torch.no_grad():
            return torch_scores(False).numpy()

    # same-weights check: base LLM scores agree between the two stacks (G = 0 makes the branch add 0)
    with torch.no_grad():
        tm.eval()
        branch.g = torch.zeros(B, cfg.hidden_size, args.rank)
        torch_base = (tm.model(input_ids=t_ids, attention_mask=t_mask, position_ids=pos).last_hidden_state[:, -1]
                      @ head_row).numpy()
    jax_base = np.asarray(jax.jit(lambda i, m: llm.score(i, m, jnp.asarray([answer]))[:, 0])(ids, mask))
    same = float(np.abs(torch_base - jax_base).max())

    print(f"SmolLM2-135M float32, batch {B} x {T} tokens (ML-1M train rows {args.offset}..{args.offset + B - 1}, "
          f"{int(mask.sum())} real tokens), rank {args.rank}, qkvo, {args.threads} thread(s) each "
          f"(torch {torch.get_num_threads()}, process affinity {len(os.sched_getaffinity(0))} cores), reps {args.reps} (median)")
    print(f"same weights: max |base 'Yes' logit torch - jax| = {same:.2e}")
    t_jt, jl = timed(jax_train, args.reps)
    t_tt, tl = timed(torch_train, args.reps)
    t_je, _ = timed(jax_eval, args.reps)
    t_te, _ = timed(torch_eval, args.reps)
    print(f"train step  cora_jax {t_jt:7.2f} s  {B / t_jt:6.2f} samples/s   torch eager {t_tt:7.2f} s  {B / t_tt:6.2f} samples/s"
          f"   ratio jax/torch {t_tt / t_jt:.2f}x   (last losses {jl:.4f} / {tl:.4f})")
    print(f"eval step   cora_jax {t_je:7.2f} s  {B / t_je:6.2f} samples/s   torch eager {t_te:7.2f} s  {B / t_te:6.2f} samples/s"
          f"   ratio jax/torch {t_te / t_je:.2f}x")


if __name__ == "__main__":
    main()
