"""The collaborative weights generator (docs/reference.md#generator): [e_u; e_i] -> G [B, d_model, r].

A Q-Former-style stack: k learned queries attend to themselves and (cross-attention) to the single
token [e_u; e_i], post-LayerNorm BERT blocks, then one linear map to d_model * r numbers per query,
averaged over queries, L2-normalised and reshaped row-major into G.

Dropout takes an explicit PRNG key (`rng=None` means evaluation mode), so the module holds no RNG
state: a training step stays a pure function of (parameters, batch, key), which is what makes a
resumed run bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from cora_jax.errors import FlagError
from cora_jax.nn import dropout


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    num_queries: int = 4            # k learned query tokens
    num_layers: int = 8             # transformer blocks (self-attn, cross-attn, FFN)
    hidden: int = 512               # block width; the paper uses 2 x CF dim (256) = 512
    num_heads: int = 8              # attention heads (head dim = hidden / num_heads)
    ffn_dim: int = 3072             # feed-forward width (exact erf GELU)
    dropout: float = 0.1            # dropout on queries, attention probabilities and block outputs
    ln_eps: float = 1e-12           # LayerNorm epsilon (BERT's)
    init_std: float = 0.02          # N(0, std) init of queries and block linears
    normalize: bool = True          # L2-normalise the whole d_model*r output vector (unit Frobenius G)

    def validate(self) -> None:
        for name in ("num_queries", "num_layers", "hidden", "num_heads", "ffn_dim"):
            if getattr(self, name) < 1:
                raise FlagError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.num_heads:
            raise FlagError(("hidden", "num_heads"), f"= {self.hidden}/{self.num_heads}: the width is not divisible by the head count")
        if not 0.0 <= self.dropout < 1.0:
            raise FlagError("dropout", f"must be in [0, 1), got {self.dropout}")


def _key(rng: jax.Array | None, i: int) -> jax.Array | None:
    return None if rng is None else jax.random.fold_in(rng, i)


def _torch_linear_init(fan_in: int):
    """PyTorch nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class Attention(nnx.Module):
    """Multi-head attention + BERT output (dense -> dropout -> LayerNorm(residual))."""

    def __init__(self, cfg: GeneratorConfig, kv_dim: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(cfg.init_std)
        lin = lambda i, o: nnx.Linear(i, o, kernel_init=init, rngs=rngs)
        self.cfg = cfg
        self.query = lin(cfg.hidden, cfg.hidden)
        self.key = lin(kv_dim, cfg.hidden)
        self.value = lin(kv_dim, cfg.hidden)
        self.dense = lin(cfg.hidden, cfg.hidden)
        self.norm = nnx.LayerNorm(cfg.hidden, epsilon=cfg.ln_eps, rngs=rngs)

    def __call__(self, x_bqh: jax.Array, kv_bkd: jax.Array, rng: jax.Array | None) -> jax.Array:
        b, q, _ = x_bqh.shape
        h = self.cfg.num_heads
        split = lambda t: t.reshape(t.shape[0], t.shape[1], h, -1)  # [B, S, hidden] -> [B, S, H, Dh]
        q_bqhd, k_bkhd, v_bkhd = split(self.query(x_bqh)), split(self.key(kv_bkd)), split(self.value(kv_bkd))
        logits_bhqk = jnp.einsum("bqhd,bkhd->bhqk", q_bqhd, k_bkhd) / math.sqrt(q_bqhd.shape[-1])
        probs_bhqk = dropout(jax.nn.softmax(logits_bhqk, axis=-1), self.cfg.dropout, _key(rng, 0))
        ctx_bqh = jnp.einsum("bhqk,bkhd->bqhd", probs_bhqk, v_bkhd).reshape(b, q, -1)
        out_bqh = dropout(self.dense(ctx_bqh), self.cfg.dropout, _key(rng, 1))
        return self.norm(out_bqh + x_bqh)


class Block(nnx.Module):
    """Self-attention over the queries, cross-attention to the CF token, feed-forward; post-LN."""

    def __init__(self, cfg: GeneratorConfig, kv_dim: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(cfg.init_std)
        self.cfg = cfg
        self.self_attn = Attention(cfg, cfg.hidden, rngs=rngs)
        self.cross_attn = Attention(cfg, kv_dim, rngs=rngs)
        self.intermediate = nnx.Linear(cfg.hidden, cfg.ffn_dim, kernel_init=init, rngs=rngs)
        self.output = nnx.Linear(cfg.ffn_dim, cfg.hidden, kernel_init=init, rngs=rngs)
        self.norm = nnx.LayerNorm(cfg.hidden, epsilon=cfg.ln_eps, rngs=rngs)

    def __call__(self, x_bqh: jax.Array, kv_bkd: jax.Array, rng: jax.Array | None) -> jax.Array:
        x_bqh = self.self_attn(x_bqh, x_bqh, _key(rng, 0))
        x_bqh = self.cross_attn(x_bqh, kv_bkd, _key(rng, 1))
        ffn_bqh = self.output(jax.nn.gelu(self.intermediate(x_bqh), approximate=False))
        return self.norm(dropout(ffn_bqh, self.cfg.dropout, _key(rng, 2)) + x_bqh)


class CollabWeightGenerator(nnx.Module):
    """[e_u; e_i] [B, in_dim] -> G [B, d_model, rank]; one G per sample."""

    def __init__(self, cfg: GeneratorConfig, in_dim: int, d_model: int, rank: int, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        self.d_model = d_model
        self.rank = rank
        self.queries = nnx.Param(cfg.init_std * jax.random.normal(rngs.params(), (cfg.num_queries, cfg.hidden)))
        self.query_norm = nnx.LayerNorm(cfg.hidden, epsilon=cfg.ln_eps, rngs=rngs)
        self.blocks = nnx.List([Block(cfg, in_dim, rngs=rngs) for _ in range(cfg.num_layers)])
        self.proj = nnx.Linear(
            cfg.hidden, d_model * rank,
            kernel_init=_torch_linear_init(cfg.hidden), bias_init=_torch_linear_init(cfg.hidden), rngs=rngs,
            kernel_metadata={"axes": (None, "gen_out")}, bias_metadata={"axes": ("gen_out",)},  # d_model * r wide
        )

    def __call__(self, cf_bd: jax.Array, *, rng: jax.Array | None = None) -> jax.Array:
        """cf_bd: [B, in_dim] = concat(e_u, e_i). rng=None: eval mode (no dropout). Returns [B, d_model, r]."""
        b = cf_bd.shape[0]
        kv_b1d = cf_bd[:, None, :].astype(jnp.float32)
        x_bqh = jnp.broadcast_to(self.queries[...], (b, *self.queries.shape))
        x_bqh = dropout(self.query_norm(x_bqh), self.cfg.dropout, _key(rng, 0))
        for i, block in enumerate(self.blocks):
            x_bqh = block(x_bqh, kv_b1d, _key(rng, i + 1))
        # The final linear map is affine, so averaging the queries first gives the same vector as
        # "linear on each query, then mean" at 1/k of the cost.
        flat_bn = self.proj(jnp.mean(x_bqh, axis=1))
        if self.cfg.normalize:  # torch F.normalize: x / max(||x||, 1e-12)
            flat_bn = flat_bn / jnp.maximum(jnp.linalg.norm(flat_bn, axis=-1, keepdims=True), 1e-12)
        return flat_bn.reshape(b, self.d_model, self.rank)
