"""The generator (docs/reference.md#generator) and the CoRA scorer (docs/reference.md#where-g-goes) on a tiny random Llama."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cora_jax.cora import TRAINABLE, CollabWeightGenerator, CoRA, CoRAConfig, GeneratorConfig
from cora_jax.llm import Llama, LlamaConfig

SMALL_GEN = GeneratorConfig(num_layers=2, hidden=16, num_heads=4, ffn_dim=24)
CF_DIM = 8
call = nnx.jit(lambda module, *args, **kw: module(*args, **kw))  # one compiled call instead of eager op dispatch


def tiny_llama(seed: int = 0, **kw) -> Llama:
    cfg = dict(vocab_size=50, hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=64)
    cfg.update(kw)
    return Llama(LlamaConfig(**cfg), rngs=nnx.Rngs(seed))


def inputs(batch: int = 3, T: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = jnp.asarray(rng.integers(2, 50, (batch, T)), jnp.int32)
    mask = np.ones((batch, T), np.int32)
    mask[0, :3] = 0  # left padding on one row
    e_u = jnp.asarray(rng.standard_normal((batch, CF_DIM)), jnp.float32)
    e_i = jnp.asarray(rng.standard_normal((batch, CF_DIM)), jnp.float32)
    return ids, jnp.asarray(mask), e_u, e_i


def test_generator_shapes_norm_and_init():
    gen = CollabWeightGenerator(GeneratorConfig(), in_dim=512, d_model=24, rank=16, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (5, 512))
    g = call(gen, x)
    assert g.shape == (5, 24, 16)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(g).reshape(5, -1), axis=-1), 1.0, rtol=1e-5)
    assert len(gen.blocks) == 8 and gen.blocks[0].intermediate.kernel.shape == (512, 3072)
    assert 0.015 < float(jnp.std(gen.queries[...])) < 0.025  # N(0, 0.02)
    bound = 1 / np.sqrt(512)  # PyTorch Linear default on the final layer
    k = np.asarray(gen.proj.kernel[...])
    assert k.max() <= bound and k.min() >= -bound and k.max() > 0.9 * bound
    # different samples -> different G; eval mode is deterministic, training mode (dropout) is not
    assert not np.allclose(g[0], g[1])
    np.testing.assert_array_equal(call(gen, x), g)
    assert not np.allclose(call(gen, x, rng=jax.random.key(2)), g)


def test_generator_normalisation_switch_and_row_major_reshape():
    cfg = GeneratorConfig(num_layers=1, hidden=16, num_heads=2, ffn_dim=8, normalize=False)
    gen = CollabWeightGenerator(cfg, in_dim=16, d_model=3, rank=2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 16))
    g = np.asarray(gen(x))
    assert not np.allclose(np.linalg.norm(g.reshape(2, -1), axis=-1), 1.0)
    # G[b, d, r] = flat[b, d * rank + r]: mean over queries of the final linear map, reshaped row-major
    h = gen.query_norm(jnp.broadcast_to(gen.queries[...], (2, *gen.queries.shape)))
    for block in gen.blocks:
        h = block(h, x[:, None, :], None)
    flat = np.asarray(jnp.mean(gen.proj(h), axis=1))  # linear on each query, then the mean
    np.testing.assert_allclose(g[1, 2, 1], flat[1, 2 * 2 + 1], rtol=1e-5)
    np.testing.assert_allclose(g.reshape(2, -1), flat, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("targets", ["qkvo", "qkvof"])
def test_untrained_cora_scores_exactly_like_the_base_llm(targets):
    llm = tiny_llama()
    model = CoRA(CoRAConfig(generator=SMALL_GEN, rank=4, alpha=8.0, targets=targets), llm, CF_DIM, answer_id=7,
                 rngs=nnx.Rngs(1))
    ids, mask, e_u, e_i = inputs()
    base = nnx.jit(lambda m: m.score(ids, mask, jnp.asarray([7]))[:, 0])(llm)
    np.testing.assert_array_equal(call(model, ids, mask, e_u, e_i), base)
    # also with dropout on (training mode): the branch is (x G) P with P = 0
    np.testing.assert_array_equal(call(model, ids, mask, e_u, e_i, rng=jax.random.key(3)), base)


def test_nonzero_p_changes_scores_per_sample_and_matches_a_merged_weight():
    llm = tiny_llama()
    model = CoRA(CoRAConfig(generator=SMALL_GEN, rank=4, alpha=8.0, targets="qk"), llm, CF_DIM, 7, rngs=nnx.Rngs(1))
    ids, mask, e_u, e_i = inputs()
    base = np.asarray(llm.score(ids, mask, jnp.asarray([7]))[:, 0])
    key = jax.random.key(5)
    for t in ("q_proj", "k_proj"):
        p = getattr(model.p, t)
        p.set_value(jax.random.normal(jax.random.fold_in(key, len(t)), p.shape))
    s = np.asarray(call(model, ids, mask, e_u, e_i))
    assert np.all(np.abs(s - base) > 1e-6)
    # sample 1 alone with the delta merged into the weights: W + (alpha/r) G P, per layer
    g = np.asarray(model.generator(jnp.concatenate([e_u, e_i], -1)))[1]
    merged = tiny_llama()
    for t in ("q_proj", "k_proj"):
        p_lro = np.asarray(getattr(model.p, t)[...])
        lin = getattr(merged.model.layers.self_attn, t)
        w = np.asarray(lin.kernel[...])  # stacked [L, d_in, d_out]
        lin.kernel.set_value(jnp.asarray(w + 2.0 * np.einsum("dr,lro->ldo", g, p_lro)))
    ref = merged.score(ids[1:2], mask[1:2], jnp.asarray([7]))[0, 0]
    np.testing.assert_allclose(s[1], ref, rtol=1e-4, atol=1e-4)


def test_trainable_filter_selects_generator_and_p_only():
    model = CoRA(CoRAConfig(generator=SMALL_GEN, rank=4, targets="qkvof"), tiny_llama(), CF_DIM, 7, rngs=nnx.Rngs(1))
    _, trainable, frozen = nnx.split(model, TRAINABLE, ...)
    top = set(nnx.to_pure_dict(trainable))
    assert top == {"generator", "p", "own_a", "loss_offset"}
    assert nnx.to_pure_dict(trainable)["loss_offset"].shape == () and float(model.loss_offset[...]) == 0.0
    assert set(nnx.to_pure_dict(trainable)["own_a"]) == {"down_proj"}  # FFN-width input: its own A
    assert set(nnx.to_pure_dict(frozen)) == {"llm"}
    p = nnx.to_pure_dict(trainable)["p"]
    assert p["q_proj"].shape == (3, 4, 24) and p["k_proj"].shape == (3, 4, 12) and p["down_proj"].shape == (3, 4, 24)
    assert all(not np.any(np.asarray(v)) for v in p.values())  # zero init


def test_bad_model_requests():
    llm = tiny_llama()
    with pytest.raises(ValueError, match="hidden_size is 24"):
        CoRA(CoRAConfig(generator=SMALL_GEN, d_model=576), llm, CF_DIM, 7, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown preset 'qkvx'"):
        CoRA(CoRAConfig(generator=SMALL_GEN, targets="qkvx"), llm, CF_DIM, 7, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="cf_dim = 256"):
        CoRA(CoRAConfig(generator=SMALL_GEN, cf_dim=256), llm, CF_DIM, 7, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="not divisible"):
        GeneratorConfig(hidden=10, num_heads=4).validate()


def test_calibrated_offset_matches_the_positive_rate():
    from cora_jax.train.state import calibrated_offset

    scores = np.random.default_rng(0).normal(15.0, 0.3, 64).astype(np.float32)
    labels = (np.arange(64) % 4 != 0).astype(np.float32)  # rate 0.75
    offset = calibrated_offset(scores, labels)
    np.testing.assert_allclose(np.mean(scores + offset), np.log(0.75 / 0.25), rtol=0, atol=1e-5)
