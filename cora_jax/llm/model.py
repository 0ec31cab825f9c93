"""Llama decoder in Flax NNX with a per-sample low-rank side branch on its projections.

Module and parameter names mirror Hugging Face's LlamaForCausalLM (model.embed_tokens,
model.layers.self_attn.q_proj, model.layers.mlp.gate_proj, model.norm, lm_head), with two
Flax conventions: a projection's weight is `kernel` stored [d_in, d_out] (HF stores
`weight` [d_out, d_in]) and the embedding table is `embedding`. The decoder layers are stored
stacked with a leading layer axis and run with `jax.lax.scan`, so a 30- or 32-layer model
compiles one layer body instead of 30 copies.

Every projection takes an optional side branch: a low-rank delta (low_rank.py; CoRA's collaborative
weights, or LoRA) adds scale * (dropout(x) A) B to its output, computed on activations.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .attention import attend, build_mask
from .config import PROJECTION_AXES, LlamaConfig
from .low_rank import NO_DELTA, LayerDelta, LowRankDelta


# ------------------------------------------------------------------------------------- layers
def _normal_init(rngs: nnx.Rngs, shape, dtype, std=0.02):
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class Linear(nnx.Module):
    """x W (+ bias) (+ a side branch computed by the caller), W stored [(L,) d_in, d_out]."""

    def __init__(self, d_in: int, d_out: int, *, cfg: LlamaConfig, axes: tuple[str, str], use_bias: bool,
                 stack: int | None, rngs: nnx.Rngs):
        lead = (stack,) if stack else ()
        lead_axes = ("layers",) if stack else ()
        self.kernel = nnx.Param(_normal_init(rngs, lead + (d_in, d_out), cfg.weight_dtype), axes=lead_axes + axes)
        self.bias = nnx.Param(jnp.zeros(lead + (d_out,), cfg.weight_dtype), axes=lead_axes + axes[1:]) if use_bias else None
        self.dtype = cfg.compute_dtype

    def __call__(self, x_btd: jax.Array, branch_bto: jax.Array | None = None) -> jax.Array:
        y = jnp.einsum("btd,do->bto", x_btd, self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if branch_bto is not None:
            y = y + branch_bto.astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, *, cfg: LlamaConfig, stack: int | None = None):
        lead = (stack,) if stack else ()
        self.weight = nnx.Param(jnp.ones(lead + (dim,), cfg.weight_dtype), axes=(("layers",) if stack else ()) + ("norm",))
        self.eps = cfg.rms_norm_eps
        self.dtype = cfg.compute_dtype

    def __call__(self, x_btd: jax.Array, dtype=None) -> jax.Array:
        # HF computes the statistics in float32 and casts back before the weight multiply.
        dtype = self.dtype if dtype is None else dtype
        x32 = x_btd.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(dtype) * x32.astype(dtype)


class Embed(nnx.Module):
    def __init__(self, vocab: int, dim: int, *, cfg: LlamaConfig, rngs: nnx.Rngs):
        self.embedding = nnx.Param(_normal_init(rngs, (vocab, dim), cfg.weight_dtype), axes=("vocab", "embed"))
        self.dtype = cfg.compute_dtype

    def __call__(self, ids_bt: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids_bt, axis=0).astype(self.dtype)


def rope_inv_freq(cfg: LlamaConfig, max_pos: jax.Array | None = None) -> tuple[jax.Array, float]:
    """Inverse frequencies [head_dim/2] and the cos/sin multiplier, per HF's rope_type variants.

    max_pos: largest position in the batch (only the "dynamic" variant depends on it).
    """
    dim, base = cfg.head_dim, cfg.rope_theta
    exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    inv = (1.0 / (np.float32(base) ** exponent)).astype(np.float32)
    if cfg.rope_freq_factors is not None:  # llama.cpp's form of llama3 scaling (GGUF rope_freqs)
        inv = (inv / np.asarray(cfg.rope_freq_factors, np.float32)).astype(np.float32)
    rs = cfg.rope_scaling
    if rs is None:
        return jnp.asarray(inv), 1.0
    if rs.rope_type == "linear":
        return jnp.asarray(inv / np.float32(rs.factor)), 1.0
    if rs.rope_type == "dynamic":
        # NTK-aware base growth once the batch runs past max_position_embeddings (HF semantics).
        m = float(cfg.max_position_embeddings)
        seq = jnp.maximum(max_pos.astype(jnp.float32) + 1.0, m) if max_pos is not None else jnp.float32(m)
        new_base = base * ((rs.factor * seq / m) - (rs.factor - 1)) ** (dim / (dim - 2))
        return 1.0 / (new_base ** jnp.asarray(exponent)), 1.0
    if rs.rope_type == "llama3":
        old = float(rs.original_max_position_embeddings)
        low_wavelen, high_wavelen = old / rs.low_freq_factor, old / rs.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / rs.factor, inv)
        smooth = (old / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return jnp.asarray(np.where(medium, smoothed, scaled).astype(np.float32)), 1.0
    raise ValueError(f"rope_type {rs.rope_type!r} is not implemented")


def _apply_rope(x_bthd: jax.Array, cos_btd: jax.Array, sin_btd: jax.Array) -> jax.Array:
    # HF layout: the two rotated halves are the first and second half of the head (rotate_half).
    half = x_bthd.shape[-1] // 2
    rot = jnp.concatenate([-x_bthd[..., half:], x_bthd[..., :half]], axis=-1)
    return x_bthd * cos_btd[:, :, None, :] + rot * sin_btd[:, :, None, :]


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, stack: int | None, rngs: nnx.Rngs):
        d, hd = cfg.hidden_size, cfg.head_dim
        kw = dict(cfg=cfg, stack=stack, rngs=rngs)
        qkv_bias = cfg.attention_bias or cfg.qkv_bias
        self.q_proj = Linear(d, cfg.num_attention_heads * hd, axes=PROJECTION_AXES["q_proj"], use_bias=qkv_bias, **kw)
        self.k_proj = Linear(d, cfg.num_key_value_heads * hd, axes=PROJECTION_AXES["k_proj"], use_bias=qkv_bias, **kw)
        self.v_proj = Linear(d, cfg.num_key_value_heads * hd, axes=PROJECTION_AXES["v_proj"], use_bias=qkv_bias, **kw)
        self.o_proj = Linear(cfg.num_attention_heads * hd, d, axes=PROJECTION_AXES["o_proj"], use_bias=cfg.attention_bias, **kw)
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, hd

    def __call__(self, x_btd: jax.Array, cos_btd: jax.Array, sin_btd: jax.Array, attend_fn, delta: LayerDelta) -> jax.Array:
        """Output [B, T, D] of the normed input x; cos/sin: [B, T, head_dim];
        attend_fn: rotated (q, k, v) -> context (attention.attend with the batch's mask)."""
        B, T, _ = x_btd.shape
        branch = delta.branches("attn_in", x_btd)
        q = self.q_proj(x_btd, branch.get("q_proj")).reshape(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x_btd, branch.get("k_proj")).reshape(B, T, self.n_kv, self.head_dim)
        v = self.v_proj(x_btd, branch.get("v_proj")).reshape(B, T, self.n_kv, self.head_dim)
        ctx = attend_fn(_apply_rope(q, cos_btd, sin_btd), _apply_rope(k, cos_btd, sin_btd), v)
        return self.o_proj(ctx, delta.branches("attn_context", ctx).get("o_proj"))


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, stack: int | None, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        kw = dict(cfg=cfg, use_bias=cfg.mlp_bias, stack=stack, rngs=rngs)
        self.gate_proj = Linear(d, f, axes=PROJECTION_AXES["gate_proj"], **kw)
        self.up_proj = Linear(d, f, axes=PROJECTION_AXES["up_proj"], **kw)
        self.down_proj = Linear(f, d, axes=PROJECTION_AXES["down_proj"], **kw)

    def __call__(self, x_btd: jax.Array, delta: LayerDelta) -> jax.Array:
        """SwiGLU output [B, T, D] of the normed input x."""
        branch = delta.branches("mlp_in", x_btd)
        hidden = _swiglu(self.gate_proj(x_btd, branch.get("gate_proj")), self.up_proj(x_btd, branch.get("up_proj")))
        return self.down_proj(hidden, delta.branches("mlp_hidden", hidden).get("down_proj"))


class DecoderLayer(nnx.Module):
    """One decoder layer; as a stored module it holds all L layers stacked on a leading axis."""

    def __init__(self, cfg: LlamaConfig, *, stack: int | None, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg=cfg, stack=stack)
        self.self_attn = Attention(cfg, stack=stack, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg=cfg, stack=stack)
        self.mlp = MLP(cfg, stack=stack, rngs=rngs)

    def __call__(self, h_btd: jax.Array, cos_btd: jax.Array, sin_btd: jax.Array, attend_fn, delta: LayerDelta) -> jax.Array:
        """The residual stream h [B, T, D] after this layer (arguments as Attention's)."""
        h_btd = h_btd + self.self_attn(self.input_layernorm(h_btd), cos_btd, sin_btd, attend_fn, delta)
        return h_btd + self.mlp(self.post_attention_layernorm(h_btd), delta)


@jax.custom_vjp
def _swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(gate) * up. Its own VJP keeps only gate and up for the backward pass; autodiff of the
    expression kept three more [B, T, intermediate] arrays per layer (silu's intermediates) among
    a training step's residuals."""
    return jax.nn.silu(gate) * up


def _swiglu_fwd(gate, up):
    return _swiglu(gate, up), (gate, up)


def _swiglu_bwd(res, g):
    gate, up = res
    sig = jax.nn.sigmoid(gate)
    return g * up * sig * (1 + gate * (1 - sig)), g * gate * sig


_swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


def _remat_policy(name: str):
    return {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[name]


class LlamaModel(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, cfg=cfg, rngs=rngs)
        self.layers = DecoderLayer(cfg, stack=cfg.num_hidden_layers, rngs=rngs)
        self.norm = RMSNorm(cfg.hidden_size, cfg=cfg)


class Llama(nnx.Module):
    """LlamaForCausalLM: `model` (embed_tokens, layers, norm) and `lm_head` unless tied."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = cfg
        self.model = LlamaModel(cfg, rngs=rngs)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(
            cfg.hidden_size, cfg.vocab_size, cfg=cfg, axes=("embed", "vocab"), use_bias=False, stack=None, rngs=rngs)

    # --------------------------------------------------------------------------- internals
    def _hidden(self, input_ids, attention_mask, delta, input_embeds, dropout_rng) -> jax.Array:
        """Hidden states [B, T, D] after the last layer, before the final norm."""
        cfg = self.config
        dt = cfg.compute_dtype
        h = (self.model.embed_tokens(input_ids) if input_embeds is None else input_embeds.astype(dt))
        B, T, _ = h.shape
        mask = jnp.ones((B, T), jnp.int32) if attention_mask is None else attention_mask.astype(jnp.int32)
        # positions count real tokens only, so a left-padded prompt sees the positions it has alone
        pos = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
        inv_freq, att_scale = rope_inv_freq(cfg, jnp.max(pos))
        ang = pos.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
        ang = jnp.concatenate([ang, ang], axis=-1)
        cos, sin = (jnp.cos(ang) * att_scale).astype(dt), (jnp.sin(ang) * att_scale).astype(dt)
        att_mask = build_mask(cfg, mask)  # [B, 1, T, S], built once for every layer
        attend_fn = partial(attend, cfg, mask_b1ts=att_mask)

        if delta is not None:
            delta.check(cfg, B)
        a_stacked, b_stacked = ({}, {}) if delta is None else delta.layer_stacked()
        graphdef, layer_state = nnx.split(self.model.layers)

        def body(h_btd, xs):
            state_l, a_l, b_l, idx = xs
            layer = nnx.merge(graphdef, state_l)
            if delta is None:
                layer_delta = NO_DELTA
            else:
                rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, idx)
                layer_delta = delta.layer(a_l, b_l, rng, dt)
            return layer(h_btd, cos, sin, attend_fn, layer_delta), None

        if cfg.remat != "none":
            body = jax.checkpoint(body, policy=_remat_policy(cfg.remat), prevent_cse=False)
        xs = (layer_state, a_stacked, b_stacked, jnp.arange(cfg.num_hidden_layers))
        h, _ = jax.lax.scan(body, h, xs)
        return h

    def _head_rows(self, ids_k: jax.Array) -> jax.Array:
        """LM-head rows [K, D] of the given vocabulary ids only, in float32."""
        if self.lm_head is None:
            w = jnp.take(self.model.embed_tokens.embedding[...], ids_k, axis=0)
        else:
            w = jnp.take(self.lm_head.kernel[...], ids_k, axis=1).T
        return w.astype(jnp.float32)

    # ------------------------------------------------------------------------------ public
    def __call__(self, input_ids: jax.Array | None, attention_mask: jax.Array | None, delta: LowRankDelta | None = None,
                 *, input_embeds: jax.Array | None = None, dropout_rng: jax.Array | None = None) -> jax.Array:
        """Full logits [B, T, V] (tests and generation).

        input_ids: int [B, T]; attention_mask: int [B, T] (1 real, 0 pad; None = all real);
        input_embeds: [B, T, D] replaces the embedding lookup when given;
        dropout_rng: key for the delta's branch dropout; None -> deterministic (eval).
        """
        h = self._hidden(input_ids, attention_mask, delta, input_embeds, dropout_rng)
        h = self.model.norm(h)
        if self.lm_head is None:
            w = self.model.embed_tokens.embedding[...].astype(h.dtype)
            return jnp.einsum("btd,vd->btv", h, w).astype(jnp.float32)
        return self.lm_head(h).astype(jnp.float32)

    def embed_slots(self, input_ids: jax.Array, slots_bt: jax.Array, vectors_bsd: jax.Array) -> jax.Array:
        """Input embeddings [B, T, D] for `input_embeds`: the token embeddings, except that a position
        with slot number s > 0 (Tokenizer.encode_with_slots) gets vectors_bsd[b, s - 1] instead.
        The rest of the forward is the ordinary one (input-space baselines: CoLLM, soft prompts)."""
        h = self.model.embed_tokens(input_ids)
        picked = jnp.take_along_axis(vectors_bsd.astype(h.dtype), jnp.maximum(slots_bt - 1, 0)[..., None], axis=1)
        return jnp.where(slots_bt[..., None] > 0, picked, h)

    def score(self, input_ids: jax.Array | None, attention_mask: jax.Array | None, answer_ids: Any,
              delta: LowRankDelta | None = None, *, input_embeds: jax.Array | None = None,
              dropout_rng: jax.Array | None = None) -> jax.Array:
        """Logits [B, K] float32 of answer_ids (int [K]) at each row's last real position.

        Only K rows of the LM head are used; the full-vocabulary head is never computed. The final norm
        and this dot product run in float32 whatever the compute dtype: in bfloat16 the scores would be
        rounded to 8 mantissa bits, and rows would tie in the AUC.
        """
        h = self._hidden(input_ids, attention_mask, delta, input_embeds, dropout_rng)
        B, T, _ = h.shape
        if attention_mask is None:
            last = jnp.full((B,), T - 1)
        else:
            last = jnp.max(jnp.where(attention_mask > 0, jnp.arange(T)[None], 0), axis=-1)
        h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)  # [B, 1, D]
        h_last = self.model.norm(h_last, dtype=jnp.float32)[:, 0]
        rows = self._head_rows(jnp.asarray(answer_ids, jnp.int32).reshape(-1))
        return jnp.einsum("bd,kd->bk", h_last, rows, precision=jax.lax.Precision.HIGHEST)


def abstract_llama(cfg: LlamaConfig) -> nnx.State:
    """Parameter shapes of a model with this config, without allocating it (jax.eval_shape)."""
    return jax.eval_shape(lambda: nnx.state(Llama(cfg, rngs=nnx.Rngs(0)), nnx.Param))


def param_count(state: nnx.State) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))
