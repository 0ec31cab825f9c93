"""Causal self-attention of the Llama decoder, in two implementations (LlamaConfig.attention_impl):

    reference    explicit scores [B, kv_heads, group x T, S], a float32 softmax whose own VJP keeps
                 only the probabilities, then the context matmul (the default)
    dot_product  jax.nn.dot_product_attention: cuDNN's fused flash-attention kernel on a GPU that
                 supports the shapes and dtype (bfloat16 / float16), XLA's implementation elsewhere

Both see the same keys: key j from query i iff j <= i, i - window < j (Mistral's sliding window,
transformers' convention) and j is a real token (left padding). `build_mask` builds what each
implementation takes once per batch, outside the scanned layers.
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp


def build_mask(cfg, mask_bt: jax.Array) -> jax.Array:
    """[B, 1, T, S] per batch. reference: the additive float32 bias of the padding, causal and window
    masks; dot_product: the boolean key-padding mask only (causality and the window are the kernel's
    own arguments, so cuDNN can skip the masked blocks instead of computing them)."""
    B, T = mask_bt.shape
    keys = mask_bt[:, None, None, :] > 0
    if cfg.attention_impl == "dot_product":
        return jnp.broadcast_to(keys, (B, 1, T, T))  # cuDNN takes a mask only as a full [., ., T, S] bias
    q_idx, k_idx = jnp.arange(T)[:, None], jnp.arange(T)[None, :]
    allowed = k_idx <= q_idx
    if cfg.sliding_window is not None:
        # sequence indices equal positions here: a left-padded row's real tokens are contiguous
        allowed &= k_idx > q_idx - cfg.sliding_window
    return jnp.where(allowed[None, None] & keys, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


def attend(cfg, q_bthd: jax.Array, k_bskd: jax.Array, v_bskd: jax.Array, mask_b1ts: jax.Array) -> jax.Array:
    """Context [B, T, heads x head_dim] of rotated queries [B, T, heads, hd] and keys / values
    [B, S, kv_heads, hd] (query head h reads kv head h // (heads / kv_heads), as HF's repeat_kv)."""
    if cfg.attention_impl == "dot_product":
        return _dot_product(cfg, q_bthd, k_bskd, v_bskd, mask_b1ts)
    return _reference(q_bthd, k_bskd, v_bskd, mask_b1ts)


def _dot_product(cfg, q, k, v, keys_b1ts):
    B, T, H, hd = q.shape
    window = None if cfg.sliding_window is None else (cfg.sliding_window - 1, 0)  # (left, right) inclusive
    run = partial(jax.nn.dot_product_attention, q, k, v, mask=keys_b1ts, is_causal=True, local_window_size=window)
    ctx = None
    if jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
        try:
            ctx = run(implementation="cudnn")
        except (RuntimeError, ValueError, NotImplementedError):
            ctx = None  # cuDNN missing, too old, or not for these shapes (raised while tracing): XLA's
    if ctx is None:
        ctx = run(implementation="xla")
    return ctx.reshape(B, T, H * hd)


def _reference(q, k, v, bias_b1ts):
    B, T, H, hd = q.shape
    n_kv = k.shape[2]
    g = H // n_kv  # query heads per key/value head (GQA); 1 = MHA, H = MQA
    # kv-head-major layout, a kv head's g query heads stacked as rows [B, n_kv, g*T, hd]: plain
    # batched matmuls, about 2x faster on CPU than one einsum over the [B, T, heads, hd] layout
    q = q.reshape(B, T, n_kv, g, hd).transpose(0, 2, 3, 1, 4).reshape(B, n_kv, g * T, hd)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    scores = jnp.einsum("bkqh,bksh->bkqs", q, k).astype(jnp.float32) / math.sqrt(hd)
    scores = (scores.reshape(B, n_kv, g, T, -1) + bias_b1ts[:, :, None]).reshape(B, n_kv, g * T, -1)
    probs = _attention_probs(scores, v.dtype)
    ctx = jnp.einsum("bkqs,bksh->bkqh", probs, v).reshape(B, n_kv, g, T, hd)
    return ctx.transpose(0, 3, 1, 2, 4).reshape(B, T, H * hd)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _attention_probs(scores: jax.Array, dtype) -> jax.Array:
    """softmax of float32 scores over the last axis, in the compute dtype. Its own VJP keeps only
    these probabilities for the backward pass, the array the context einsum reads anyway; autodiff
    kept the float32 softmax output and its sums beside them (a second [B, heads, T, T] array per layer)."""
    return jax.nn.softmax(scores, axis=-1).astype(dtype)


def _attention_probs_fwd(scores, dtype):
    probs = _attention_probs(scores, dtype)
    return probs, probs


def _attention_probs_bwd(dtype, probs, g):
    p32, g32 = probs.astype(jnp.float32), g.astype(jnp.float32)
    return (p32 * (g32 - jnp.sum(g32 * p32, axis=-1, keepdims=True)),)


_attention_probs.defvjp(_attention_probs_fwd, _attention_probs_bwd)
