"""Llama model equivalences without torch: side-branch delta == merged weights, zero delta ==
base, padding invariance, gradients only for the delta, 7B shapes, remat."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cora_jax.llm import LlamaConfig, LowRankDelta, TARGETS, llama2_7b
from cora_jax.llm.attention import _attention_probs
from cora_jax.llm.model import _swiglu, abstract_llama, param_count
from llm_helpers import tiny_config, tiny_model

B, T, R = 3, 7, 5


def _inputs(cfg, seed=0):
    ids = jax.random.randint(jax.random.key(seed), (B, T), 0, cfg.vocab_size)
    return ids, jnp.ones((B, T), jnp.int32)


def _delta(cfg, *, per_sample_b=False, per_layer_a=False, seed=1, targets=TARGETS):
    """Per-sample A (one array for q/k/v and gate/up, given per target), per-layer B."""
    dims = cfg.target_dims()
    L = cfg.num_hidden_layers
    keys = iter(jax.random.split(jax.random.key(seed), 32))
    lead = (L,) if per_layer_a else ()
    a_d = jax.random.normal(next(keys), lead + (B, cfg.hidden_size, R)) * 0.3
    a = {}
    for t in targets:
        d_in = dims[t][0]
        a[t] = a_d if d_in == cfg.hidden_size and t != "o_proj" else jax.random.normal(next(keys), lead + (B, d_in, R)) * 0.3
    bshape = lambda t: (L, B, R, dims[t][1]) if per_sample_b else (L, R, dims[t][1])  # noqa: E731
    b = {t: jax.random.normal(next(keys), bshape(t)) * 0.3 for t in targets}
    return LowRankDelta(a=a, b=b, scale=1.7, a_per_layer=per_layer_a)


def _merged_model(model, delta, i):
    """A copy of `model` whose kernels hold W + scale * A_i B_l for sample i (the slow reference)."""
    m = nnx.clone(model)
    L = m.config.num_hidden_layers
    for t, a in delta.a.items():
        sub = m.model.layers.self_attn if t in ("q_proj", "k_proj", "v_proj", "o_proj") else m.model.layers.mlp
        lin = getattr(sub, t)
        a_i = a[:, i] if (delta.a_per_layer or a.ndim == 4) else (a[i] if a.ndim == 3 else a)
        a_l = a_i if a_i.ndim == 3 else jnp.broadcast_to(a_i, (L,) + a_i.shape)
        b = delta.b[t]
        b_l = b[:, i] if b.ndim == 4 else b
        lin.kernel.set_value(lin.kernel[...] + delta.scale * jnp.einsum("ldr,lro->ldo", a_l, b_l))
    return m


@pytest.mark.parametrize("per_sample_b,per_layer_a", [(False, False), (True, True)])
def test_side_branch_equals_merged_weights(per_sample_b, per_layer_a):
    model = tiny_model()
    cfg = model.config
    ids, mask = _inputs(cfg)
    delta = _delta(cfg, per_sample_b=per_sample_b, per_layer_a=per_layer_a)
    got = nnx.jit(lambda m, d: m(ids, mask, d))(model, delta)
    base = model(ids, mask)
    assert float(jnp.max(jnp.abs(got - base))) > 1e-2  # the delta really changes the output
    for i in range(B):
        want = _merged_model(model, delta, i)(ids[i:i + 1], mask[i:i + 1])
        np.testing.assert_allclose(np.asarray(got[i:i + 1]), np.asarray(want), atol=1e-5, rtol=0)


def test_zero_delta_is_exactly_base_and_score_matches_full_logits():
    model = tiny_model(tie_word_embeddings=False)
    cfg = model.config
    ids, mask = _inputs(cfg)
    d = _delta(cfg, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    zero = LowRankDelta(a=d.a, b=jax.tree.map(jnp.zeros_like, d.b), scale=2.0)
    base, with_zero = model(ids, mask), model(ids, mask, zero)
    assert np.array_equal(np.asarray(base), np.asarray(with_zero))
    answer = jnp.array([3, 17, 60])
    s_base, s_zero = model.score(ids, mask, answer), model.score(ids, mask, answer, zero)
    assert np.array_equal(np.asarray(s_base), np.asarray(s_zero))
    np.testing.assert_allclose(np.asarray(s_base), np.asarray(base[:, -1, answer]), atol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_alone_equals_inside_left_padded_batch(tied):
    model = tiny_model(tie_word_embeddings=tied)
    cfg = model.config
    rng = np.random.default_rng(0)
    lens = [4, 9, 6]
    T_ = max(lens) + 2
    ids = np.zeros((3, T_), np.int32)
    mask = np.zeros((3, T_), np.int32)
    rows = [rng.integers(0, cfg.vocab_size, n) for n in lens]
    for i, r in enumerate(rows):
        ids[i, T_ - len(r):], mask[i, T_ - len(r):] = r, 1
    answer = jnp.array([5, 9])
    a = jax.random.normal(jax.random.key(3), (3, cfg.hidden_size, R))
    b = jax.random.normal(jax.random.key(4), (cfg.num_hidden_layers, R, cfg.num_attention_heads * cfg.head_dim))
    delta = LowRankDelta(a={"q_proj": a}, b={"q_proj": b}, scale=0.5)
    batched = model.score(jnp.asarray(ids), jnp.asarray(mask), answer, delta)
    for i, r in enumerate(rows):
        one = LowRankDelta(a={"q_proj": a[i:i + 1]}, b={"q_proj": b}, scale=0.5)
        alone = model.score(jnp.asarray(r[None]), jnp.ones((1, len(r)), jnp.int32), answer, one)
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(alone[0]), atol=1e-5, rtol=0)


def test_gradients_only_for_the_delta():
    model = tiny_model()
    cfg = model.config
    ids, mask = _inputs(cfg)
    delta = _delta(cfg, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    graphdef, params = nnx.split(model)

    def loss(d):  # the frozen weights are closed over, only the delta is an argument of grad
        m = nnx.merge(graphdef, params)
        return jnp.mean(m.score(ids, mask, jnp.array([1]), d) ** 2)

    grads = jax.grad(loss)(delta)
    assert jax.tree.structure(grads) == jax.tree.structure(delta)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))
    # no dot in the backward pass produces a weight-shaped gradient (2-D [d_in, d_out] per layer)
    weight_shapes = {tuple(v.shape[-2:]) for path, v in nnx.iter_graph(model) if path and path[-1] == "kernel"}
    assert (B, cfg.hidden_size) not in weight_shapes  # activations must not alias a weight shape

    def dots(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                yield tuple(eqn.outvars[0].aval.shape)
            for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else ():
                yield from dots(sub)
            for p in eqn.params.values():
                inner = getattr(p, "jaxpr", None)
                if inner is not None:
                    yield from dots(getattr(inner, "jaxpr", inner))

    shapes = list(dots(jax.make_jaxpr(jax.grad(loss))(delta).jaxpr))
    assert shapes, "no dot_general found: the jaxpr walk is broken"
    assert not [s for s in shapes if s in weight_shapes], "a frozen weight's gradient is computed"


def test_swiglu_vjp_equals_autodiff_of_the_expression():
    rng = np.random.default_rng(0)
    gate, up, cot = (jnp.asarray(4 * rng.standard_normal((3, 5, 7)), jnp.float32) for _ in range(3))
    out, vjp = jax.vjp(_swiglu, gate, up)
    ref_out, ref_vjp = jax.vjp(lambda g, u: jax.nn.silu(g) * u, gate, up)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), rtol=1e-6, atol=1e-6)
    for got, want in zip(vjp(cot), ref_vjp(cot)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_attention_probs_vjp_equals_autodiff_of_softmax(dtype):
    rng = np.random.default_rng(0)
    scores = jnp.asarray(3 * rng.standard_normal((2, 3, 5, 6)), jnp.float32)
    scores = scores.at[0, 0, 0, 2:].set(jnp.finfo(jnp.float32).min)  # a masked row, as padding gives
    cot = jnp.asarray(rng.standard_normal(scores.shape), dtype)
    out, vjp = jax.vjp(lambda s: _attention_probs(s, jnp.dtype(dtype)), scores)
    ref_out, ref_vjp = jax.vjp(lambda s: jax.nn.softmax(s, axis=-1).astype(dtype), scores)
    assert out.dtype == jnp.dtype(dtype)
    tol = 1e-6 if dtype == "float32" else 1e-2  # bfloat16: the backward reads the rounded probabilities
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref_out, np.float32), atol=tol)
    (got,), (want,) = vjp(cot), ref_vjp(cot)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=tol, atol=tol)


def test_remat_and_bf16_configs_run():
    model = tiny_model()
    ids, mask = _inputs(model.config)
    ref = model(ids, mask)
    rem = tiny_model(remat="full")
    np.testing.assert_allclose(np.asarray(rem(ids, mask)), np.asarray(ref), atol=1e-6)
    g = jax.grad(lambda d: rem.score(ids, mask, jnp.array([1]), d).sum())(_delta(model.config))
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(g))
    bf = tiny_model(dtype="bfloat16")
    out = bf(ids, mask)
    assert out.dtype == jnp.float32 and float(jnp.max(jnp.abs(out - ref))) < 0.1


def test_bad_delta_shapes_are_named():
    model = tiny_model()
    ids, mask = _inputs(model.config)
    a = jnp.zeros((B, model.config.hidden_size + 1, R))
    b = jnp.zeros((model.config.num_hidden_layers, R, model.config.hidden_size))
    with pytest.raises(ValueError, match="q_proj"):
        model(ids, mask, LowRankDelta(a={"q_proj": a}, b={"q_proj": b}, scale=1.0))


def test_an_a_given_per_input_equals_it_given_per_target():
    """a["attn_in"] serves q/k/v and a["mlp_in"] gate/up (x A computed once per input): the same numbers
    as the same arrays given per target; an own a[t] takes precedence over its input's."""
    model = tiny_model()
    ids, mask = _inputs(model.config)
    d = _delta(model.config)
    a_in, a_mlp = d.a["q_proj"], d.a["gate_proj"]
    by_input = LowRankDelta(a={"attn_in": a_in, "o_proj": d.a["o_proj"], "mlp_in": a_mlp, "up_proj": d.a["up_proj"],
                               "mlp_hidden": d.a["down_proj"]}, b=d.b, scale=d.scale)
    np.testing.assert_array_equal(np.asarray(model(ids, mask, by_input)), np.asarray(model(ids, mask, d)))
    b_q = {"q_proj": d.b["q_proj"]}
    for a, match in [({"attn": a_in}, "unknown target 'attn'"), ({"attn_in": a_in, "mlp_in": a_mlp}, r"a\['mlp_in'\] serves no"),
                     ({}, r"b\['q_proj'\] has no A")]:
        with pytest.raises(ValueError, match=match):
            model(ids, mask, LowRankDelta(a=a, b=b_q, scale=1.0))


def test_llama2_7b_builds_abstractly_with_6_74b_params():
    cfg = llama2_7b(param_dtype="bfloat16")
    state = abstract_llama(cfg)
    n = param_count(state)
    assert n == cfg.num_params() == 6_738_415_616
    assert state["model"]["layers"]["self_attn"]["q_proj"]["kernel"].shape == (32, 4096, 4096)


def test_config_from_hf_dict_variants():
    d = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
             num_attention_heads=32, rope_scaling={"type": "linear", "factor": 2.0})
    cfg = LlamaConfig.from_hf_dict(d)
    assert cfg.num_key_value_heads == 32 and cfg.rope_scaling.rope_type == "linear" and cfg.head_dim == 128
    d5 = dict(d, rope_scaling=None, rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                                      "original_max_position_embeddings": 8192})
    cfg5 = LlamaConfig.from_hf_dict(d5)
    assert cfg5.rope_theta == 5e5 and cfg5.rope_scaling.original_max_position_embeddings == 8192
    with pytest.raises(ValueError, match="rope_type"):
        LlamaConfig.from_hf_dict(dict(d, rope_scaling={"rope_type": "su"}))
    assert tiny_config().head_dim == 6


def test_bfloat16_scores_are_float32():
    """A bfloat16 model's scores come from a float32 final norm and dot: not rounded to bfloat16."""
    bf = tiny_model(dtype="bfloat16")
    ids, mask = _inputs(bf.config)
    answer = jnp.array([1, 2])
    s = np.asarray(bf.score(ids, mask, answer))
    assert s.dtype == np.float32
    rounded = np.asarray(jnp.asarray(s).astype(jnp.bfloat16).astype(jnp.float32))
    assert np.mean(s != rounded) > 0.5, "scores look quantised to bfloat16"
    # The same numbers from the bfloat16 hidden states, normalised and dotted in float64 here.
    h = np.asarray(bf._hidden(ids, mask, None, None, None).astype(jnp.float32), np.float64)
    last = np.asarray(mask).cumsum(-1).argmax(-1)
    x = h[np.arange(len(last)), last]
    x = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + bf.config.rms_norm_eps)
    x = x * np.asarray(bf.model.norm.weight[...].astype(jnp.float32), np.float64)
    w = np.asarray(bf.model.embed_tokens.embedding[...].astype(jnp.float32), np.float64) if bf.lm_head is None else \
        np.asarray(bf.lm_head.kernel[...].astype(jnp.float32), np.float64).T
    np.testing.assert_allclose(s, x @ w[np.asarray(answer)].T, rtol=1e-5, atol=1e-5)
