"""CF backbones: shapes, LightGCN propagation against a dense reference, SASRec masks, bad configs."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from cora_jax.cf.models import CFBatch, CFConfigError, CFModelSpec, bipartite_edges, build_model

U, I, D = 7, 11, 16


def _batch(uid, iid, hist=None):
    hist = np.zeros((len(uid), 0), np.int32) if hist is None else hist
    return CFBatch(uid=jnp.asarray(uid, jnp.int32), iid=jnp.asarray(iid, jnp.int32), hist=jnp.asarray(hist, jnp.int32))


def _tiny_graph():
    rng = np.random.default_rng(0)
    uid = rng.integers(1, U, 40)
    iid = rng.integers(1, I, 40)
    label = rng.integers(0, 2, 40)
    return uid, iid, label


@pytest.mark.parametrize("kind", ["mf", "lightgcn", "sasrec"])
def test_shapes_and_interface(kind):
    edges = bipartite_edges(*_tiny_graph(), U, I) if kind == "lightgcn" else None
    spec = CFModelSpec(kind=kind, dim=D, user_num=U, item_num=I, n_edges=0 if edges is None else len(edges[0]),
                       seq_len=5 if kind == "sasrec" else 0)
    model = build_model(spec, seed=0, edges=edges)
    hist = np.array([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8], [0, 0, 0, 0, 9]]) if kind == "sasrec" else None
    batch = _batch([1, 2, 3], [4, 5, 6], hist)
    u, i, s = model.user_repr(batch), model.item_repr(batch), model.score(batch)
    assert u.shape == (3, D) and i.shape == (3, D) and s.shape == (3,)
    np.testing.assert_allclose(s, jnp.sum(u * i, -1), rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(s))


def test_mf_init_and_padding_row():
    model = build_model(CFModelSpec(kind="mf", dim=256, user_num=500, item_num=400), seed=0)
    w = np.asarray(model.user_emb[...])
    assert np.all(w[0] == 0.0)  # padding row, as torch Embedding(padding_idx=0)
    assert abs(w[1:].std() - 1.0) < 0.02 and abs(w[1:].mean()) < 0.02  # N(0, 1)


def test_bipartite_edges_normalisation():
    uid, iid, label = np.array([1, 1, 2, 2, 2]), np.array([1, 2, 1, 1, 3]), np.array([1, 1, 1, 1, 0])
    src, dst, w = bipartite_edges(uid, iid, label, 3, 4)
    # positives (1,1), (1,2), (2,1) once each (the duplicate (2,1) is merged, (2,3) is negative)
    assert len(src) == 6
    deg = {1: 2, 2: 1, 3 + 1: 2, 3 + 2: 1}  # user 1, user 2, item 1, item 2 as nodes
    for s, d, x in zip(src, dst, w):
        assert x == pytest.approx(1 / np.sqrt(deg[s] * deg[d]))


def test_lightgcn_matches_dense_reference():
    uid, iid, label = _tiny_graph()
    edges = bipartite_edges(uid, iid, label, U, I)
    spec = CFModelSpec(kind="lightgcn", dim=D, user_num=U, item_num=I, n_layers=3, n_edges=len(edges[0]))
    model = build_model(spec, seed=1, edges=edges)
    # Dense D^-1/2 A D^-1/2 built independently from the raw pairs.
    a = np.zeros((U + I, U + I))
    for u, i, y in zip(uid, iid, label):
        if y == 1:
            a[u, U + i] = a[U + i, u] = 1.0
    deg = a.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-12)), 0.0)
    norm = inv[:, None] * a * inv[None, :]
    x = np.concatenate([np.asarray(model.user_emb[...]), np.asarray(model.item_emb[...])]).astype(np.float64)
    layers = [x]
    for _ in range(3):
        layers.append(norm @ layers[-1])
    ref = np.mean(layers, axis=0)
    users, items = model.tables()
    np.testing.assert_allclose(users, ref[:U], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(items, ref[U:], rtol=1e-5, atol=1e-6)
    assert not np.allclose(ref, x)  # the propagation did something


def _sasrec(seq_len=6, seed=0):
    spec = CFModelSpec(kind="sasrec", dim=D, user_num=U, item_num=I, seq_len=seq_len, n_heads=2)
    return build_model(spec, seed=seed)


def test_sasrec_causal():
    model = _sasrec()
    hist = np.array([[0, 1, 2, 3, 4, 5]])
    base = model.encode_sequence(jnp.asarray(hist))
    changed = hist.copy()
    changed[0, 4] = 9  # change position 4: positions 0..3 must not move, 4 and 5 must
    out = model.encode_sequence(jnp.asarray(changed))
    np.testing.assert_allclose(out[:, :4], base[:, :4], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[:, 4:], base[:, 4:], atol=1e-4)


def test_sasrec_padding_invariance():
    model = _sasrec(seq_len=8)
    real = [3, 7, 2]
    # The same history with 5, 2 or 0 pads (positions are right-aligned) gives the same user vector.
    reprs = [model.user_repr(_batch([1], [1], np.array([[0] * pads + real]))) for pads in (5, 2, 0)]
    for r in reprs[1:]:
        np.testing.assert_allclose(r, reprs[0], rtol=1e-5, atol=1e-5)
    # Changing what sits in padded slots (the padding embedding row) changes nothing either.
    before = model.user_repr(_batch([1], [1], np.array([[0] * 5 + real])))
    model.item_emb[...] = model.item_emb[...].at[0].set(5.0)
    after = model.user_repr(_batch([1], [1], np.array([[0] * 5 + real])))
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    # Padded positions of the sequence output are zero before the final LayerNorm, i.e. equal its bias.
    out = model.encode_sequence(jnp.asarray([[0] * 5 + real]))
    np.testing.assert_allclose(out[0, :5], np.broadcast_to(model.final_ln.bias[...], (5, D)), atol=1e-6)


def test_sasrec_dropout_only_with_key():
    model = _sasrec()
    batch = _batch([1, 2], [3, 4], np.array([[0, 1, 2, 3, 4, 5], [0, 0, 0, 6, 7, 8]]))
    np.testing.assert_array_equal(model.score(batch), model.score(batch))  # eval: deterministic
    train_a = model.score(batch, key=jax.random.key(0))
    train_b = model.score(batch, key=jax.random.key(1))
    assert not np.allclose(train_a, train_b)


def test_sasrec_item_repr_is_raw_embedding_row():
    model = _sasrec()
    batch = _batch([1], [4], np.zeros((1, 6), np.int32))
    np.testing.assert_array_equal(model.item_repr(batch)[0], model.item_emb[...][4])


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(kind="bpr"), "unknown"),
        (dict(dim=0), "dim must be > 0"),
        (dict(dim=-4), "dim must be > 0"),
        (dict(kind="sasrec", seq_len=0), "seq_len"),
        (dict(kind="sasrec", seq_len=4, n_heads=3), "n_heads"),
    ],
)
def test_bad_model_spec(fields, match):
    spec = CFModelSpec(**{**dict(kind="mf", dim=D, user_num=U, item_num=I), **fields})
    with pytest.raises(CFConfigError, match=match):
        build_model(spec)


def test_lightgcn_edge_count_mismatch():
    edges = bipartite_edges(*_tiny_graph(), U, I)
    spec = CFModelSpec(kind="lightgcn", dim=D, user_num=U, item_num=I, n_edges=len(edges[0]) + 1)
    with pytest.raises(CFConfigError, match="n_edges"):
        build_model(spec, edges=edges)


def test_param_split_has_no_graph():
    """Only embeddings are trainable in LightGCN; the graph arrays stay out of the optimiser."""
    edges = bipartite_edges(*_tiny_graph(), U, I)
    spec = CFModelSpec(kind="lightgcn", dim=D, user_num=U, item_num=I, n_edges=len(edges[0]))
    _, params, rest = nnx.split(build_model(spec, edges=edges), nnx.Param, ...)
    assert sorted(nnx.to_pure_dict(params)) == ["item_emb", "user_emb"]
    assert sorted(nnx.to_pure_dict(rest)) == ["dst", "src", "weight"]


def test_sasrec_last_only_equals_full_sequence():
    """user_repr computes the last block for the last position alone; it must equal the full pass."""
    model = _sasrec()
    hist = np.array([[0, 1, 2, 3, 4, 5], [0, 0, 0, 6, 7, 8], [0, 0, 0, 0, 0, 0]])
    full = model.encode_sequence(jnp.asarray(hist))[:, -1]
    np.testing.assert_allclose(model.user_repr(_batch([1, 2, 3], [1, 1, 1], hist)), full, rtol=1e-5, atol=1e-5)
