"""attention_impl "dot_product" (jax.nn.dot_product_attention; XLA's on a CPU) against the reference
path: the same logits, "Yes" scores and gradients w.r.t. a per-sample low-rank delta, in float32,
with left padding, grouped-query heads and a Mistral sliding window."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cora_jax.llm import Llama, LowRankDelta
from cora_jax.llm.attention import build_mask
from llm_helpers import tiny_config

B, T, R = 4, 12, 3
TOL = 1e-5


def _batch(cfg):
    lengths = np.array([12, 9, 5, 1])  # left padding down to a single real token
    mask = (np.arange(T)[None] >= T - lengths[:, None]).astype(np.int32)
    ids = np.where(mask > 0, np.random.default_rng(0).integers(2, cfg.vocab_size, (B, T)), 0)
    return jnp.asarray(ids, jnp.int32), jnp.asarray(mask)


def _delta(cfg):
    keys = iter(jax.random.split(jax.random.key(3), 8))
    a = 0.3 * jax.random.normal(next(keys), (B, cfg.hidden_size, R))
    b = {t: 0.3 * jax.random.normal(next(keys), (cfg.num_hidden_layers, R, cfg.target_dims()[t][1]))
         for t in ("q_proj", "k_proj", "v_proj")}
    return {"a": a, "b": b}


def _run(cfg, impl, ids, mask, params):
    model = Llama(cfg.replace(attention_impl=impl), rngs=nnx.Rngs(0))

    def score(p):
        delta = LowRankDelta(a={t: p["a"] for t in p["b"]}, b=p["b"], scale=2.0)
        return model.score(ids, mask, jnp.array([5, 7]), delta)

    s, vjp = jax.vjp(score, params)
    (grads,) = vjp(jnp.asarray(np.random.default_rng(1).standard_normal(s.shape), s.dtype))
    logits = model(ids, mask)
    return s, grads, logits


@pytest.mark.parametrize("window", [None, 4])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_dot_product_attention_matches_the_reference(window, kv_heads):
    cfg = tiny_config(num_key_value_heads=kv_heads, sliding_window=window)
    ids, mask = _batch(cfg)
    params = _delta(cfg)
    s_ref, g_ref, logits_ref = _run(cfg, "reference", ids, mask, params)
    s_dp, g_dp, logits_dp = _run(cfg, "dot_product", ids, mask, params)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(logits_dp)[real], np.asarray(logits_ref)[real], atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np.asarray(s_dp), np.asarray(s_ref), atol=TOL, rtol=TOL)
    for (path, gd), gr in zip(jax.tree_util.tree_leaves_with_path(g_dp), jax.tree.leaves(g_ref)):
        assert np.abs(np.asarray(gr)).max() > 1e-3, path  # the delta really gets gradient
        np.testing.assert_allclose(np.asarray(gd), np.asarray(gr), atol=TOL, rtol=TOL, err_msg=str(path))


def test_masks_see_the_same_keys():
    """The reference's bias and what dot_product_attention masks (padding here, causality and the
    window as its arguments) allow the same keys for every real query."""
    cfg = tiny_config(sliding_window=3)
    _, mask = _batch(cfg)
    bias = np.asarray(build_mask(cfg, mask))[:, 0]
    keys = np.asarray(build_mask(cfg.replace(attention_impl="dot_product"), mask))[:, 0]
    q, k = np.arange(T)[:, None], np.arange(T)[None]
    expected = keys & (k <= q) & (k > q - 3)
    real = np.asarray(mask, bool)[:, :, None]
    np.testing.assert_array_equal((bias == 0) & real, expected & real)
