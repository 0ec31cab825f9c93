"""A PyTorch port of the CoRA training step, holding the weights cora_jax holds: the reference that
bench_torch_vs_jax.py times and tests/test_torch_train_parity.py checks cora_jax's step against.

transformers' LlamaForCausalLM with cora_jax's LLM weights, each q/k/v/o nn.Linear wrapped to add
scale * (dropout(x) G) P_l with G [B, d, r] from the Q-Former generator; the "Yes" logit at the last
(left-padded: real) position; BCE on it plus a learned scalar offset; AdamW with PyTorch's usual
parameter groups (no decay on biases, LayerNorms and < 2-D parameters), a per-step learning rate of
linear warmup + cosine, and optional global-norm gradient clipping.

Trainables are exchanged with cora_jax in its layout (`TorchCoRA.export` / `load`): flat
"generator/blocks/0/self_attn/query/kernel"-style paths, Linear kernels [d_in, d_out] (torch: the
transposed weight), LayerNorm "scale", P stacked over layers [L, r, d_out].
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import transformers
from transformers.initialization import no_init_weights

from cora_jax.batch import Batch

QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")


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
    """The Q-Former generator, module names as in cora_jax.cora.generator."""

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
            blk.intermediate = torch.nn.Linear(gc.hidden, gc.ffn_dim)
            blk.output = torch.nn.Linear(gc.ffn_dim, gc.hidden)
            blk.norm = torch.nn.LayerNorm(gc.hidden, eps=gc.ln_eps)
            self.blocks.append(blk)
        self.proj = torch.nn.Linear(gc.hidden, d_model * rank)

    def forward(self, cf_bd):
        kv = cf_bd[:, None]
        x = self.query_norm(self.queries.expand(cf_bd.shape[0], -1, -1))
        x = torch.nn.functional.dropout(x, self.gc.dropout, self.training)
        for blk in self.blocks:
            x = blk.cross_attn(blk.self_attn(x, x), kv)
            ffn = blk.output(torch.nn.functional.gelu(blk.intermediate(x)))
            x = blk.norm(torch.nn.functional.dropout(ffn, self.gc.dropout, self.training) + x)
        flat = self.proj(x.mean(1))
        if self.gc.normalize:
            flat = torch.nn.functional.normalize(flat, dim=-1)
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
    if c.rope_scaling is not None or c.rope_freq_factors is not None or c.attention_bias or c.qkv_bias or c.mlp_bias \
            or c.sliding_window is not None:
        raise ValueError("torch_llm copies plain-RoPE, bias-free Llamas without a sliding window only")
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
    with no_init_weights():  # every weight is overwritten below; the random init would take seconds
        model = transformers.LlamaForCausalLM(hf_cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()  # not done under no_init_weights: a tied head would keep its empty weight
    return model.eval().requires_grad_(False)


class TorchCoRA(torch.nn.Module):
    """Frozen LLM (cora_jax's weights) with the branch on q/k/v/o; trainable generator, one P [r, d_out]
    per (target, layer) and the loss offset. ccfg: a cora_jax CoRAConfig (its "qkvo" targets)."""

    def __init__(self, jax_llm, ccfg, cf_dim: int, answer_id: int):
        super().__init__()
        if ccfg.targets != "qkvo":
            raise ValueError(f"the torch port wraps q/k/v/o only, not targets={ccfg.targets!r}")
        self.answer_id = answer_id
        self.llm = torch_llm(jax_llm)
        self.branch = Branch()
        self.p = torch.nn.ParameterDict()
        scale = ccfg.alpha / ccfg.rank
        for t in QKVO:
            for i, layer in enumerate(self.llm.model.layers):
                base = getattr(layer.self_attn, t)
                # one leaf parameter per (target, layer), as a torch port has (views of one tensor would alias)
                self.p[f"{t}_{i}"] = p_li = torch.nn.Parameter(torch.zeros(ccfg.rank, base.out_features))
                setattr(layer.self_attn, t, LinearWithBranch(base, p_li, self.branch, scale, ccfg.branch_dropout))
        self.generator = TGenerator(ccfg.generator, 2 * cf_dim, self.llm.config.hidden_size, ccfg.rank)
        self.loss_offset = torch.nn.Parameter(torch.zeros(()))

    def yes_logits(self, ids, mask, g_bdr: torch.Tensor) -> torch.Tensor:
        """The "Yes" logit [B] of left-padded prompts under per-sample factors G [B, d, r]."""
        ids, mask = torch.as_tensor(ids).long(), torch.as_tensor(mask).long()
        self.branch.g = g_bdr
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # each prompt's positions as if alone
        h = self.llm.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state[:, -1]  # final-normed
        return h @ self.llm.get_output_embeddings().weight[self.answer_id]  # one LM-head row only

    def scores(self, batch: Batch) -> torch.Tensor:
        """batch: numpy ids/mask [B, T], e_u/e_i [B, cf_dim] -> "Yes" logits [B]."""
        cf = torch.cat([torch.as_tensor(batch.e_u), torch.as_tensor(batch.e_i)], -1)
        return self.yes_logits(batch.ids, batch.mask, self.generator(cf))

    def loss(self, batch: Batch) -> torch.Tensor:
        logits = self.scores(batch) + self.loss_offset
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.as_tensor(batch.label).float())

    def trainables(self) -> list[tuple[str, list[torch.nn.Parameter], str]]:
        """(cora_jax path, torch parameters, layout) of every trainable; layout "T": a transposed
        Linear weight, "layers": per-layer parameters stacked on a new first axis, "same": as is."""
        out = []
        for mname, mod in self.generator.named_modules():
            prefix = "/".join(["generator", *filter(None, mname.split("."))])
            for pname, p in mod.named_parameters(recurse=False):
                if isinstance(mod, torch.nn.Linear) and pname == "weight":
                    out.append((f"{prefix}/kernel", [p], "T"))
                elif isinstance(mod, torch.nn.LayerNorm) and pname == "weight":
                    out.append((f"{prefix}/scale", [p], "same"))
                else:
                    out.append((f"{prefix}/{pname}", [p], "same"))
        for t in QKVO:
            out.append((f"p/{t}", [self.p[f"{t}_{i}"] for i in range(len(self.llm.model.layers))], "layers"))
        out.append(("loss_offset", [self.loss_offset], "same"))
        return out

    def export(self, of: Callable[[torch.nn.Parameter], torch.Tensor] = lambda p: p) -> dict[str, np.ndarray]:
        """{cora_jax path: array in cora_jax's layout} of `of(parameter)` (the value, or e.g. its .grad)."""
        as_np = lambda ps: [of(p).detach().numpy() for p in ps]  # noqa: E731
        layout = {"T": lambda a: a[0].T, "same": lambda a: a[0], "layers": np.stack}
        return {path: np.array(layout[kind](as_np(ps))) for path, ps, kind in self.trainables()}

    @torch.no_grad()
    def load(self, values: dict[str, np.ndarray]) -> None:
        """Set the trainables named in `values` (cora_jax paths and layout); the others keep theirs."""
        for path, ps, kind in self.trainables():
            if path not in values:
                continue
            v = np.asarray(values[path], np.float32)
            parts = {"T": lambda: [v.T], "same": lambda: [v], "layers": lambda: list(v)}[kind]()
            if len(parts) != len(ps) or any(p.shape != x.shape for p, x in zip(ps, parts)):
                raise ValueError(f"{path}: shape {v.shape} does not fit the torch parameters")
            for p, x in zip(ps, parts):
                p.copy_(torch.tensor(x))


def learning_rate(cfg, count: int) -> float:
    """Linear warmup cfg.warmup_init_lr -> cfg.lr over warmup_steps updates, then cosine to min_lr at
    decay_steps. `count` is the number of updates already applied (0 for the first step).
    cfg: a cora_jax OptimConfig."""
    if count < cfg.warmup_steps:
        return cfg.warmup_init_lr + (cfg.lr - cfg.warmup_init_lr) * count / cfg.warmup_steps
    t = min(count - cfg.warmup_steps, cfg.decay_steps - cfg.warmup_steps) / (cfg.decay_steps - cfg.warmup_steps)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))


def make_optimizer(model: TorchCoRA, cfg) -> torch.optim.AdamW:
    """AdamW over the trainables; weight decay on >= 2-D parameters outside biases and LayerNorms."""
    decay, no_decay, seen = [], [], set()
    for mod in model.modules():
        for pname, p in mod.named_parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:  # each P is held by its ParameterDict and its wrapped Linear
                seen.add(id(p))
                plain = p.ndim >= 2 and pname != "bias" and not isinstance(mod, torch.nn.LayerNorm)
                (decay if plain else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate(cfg, 0), betas=(cfg.b1, cfg.b2), eps=cfg.eps)


def backward(model: TorchCoRA, batch: Batch) -> torch.Tensor:
    """Loss of the batch; its gradients are left in the trainables' .grad."""
    for p in model.parameters():
        p.grad = None
    loss = model.loss(batch)
    loss.backward()
    return loss


def update(model: TorchCoRA, opt: torch.optim.AdamW, cfg, step: int) -> None:
    """Apply the gradients as update number `step` (1-based): clip, then AdamW at learning_rate(step - 1)."""
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
    for group in opt.param_groups:
        group["lr"] = learning_rate(cfg, step - 1)
    opt.step()
