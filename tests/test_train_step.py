"""The optimiser (schedule, decay mask) and the train step (the sharded step of training, on a
one-device mesh): only generator and P move."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cora_jax.batch import Batch
from cora_jax.cora import TRAINABLE, CoRA, CoRAConfig, GeneratorConfig
from cora_jax.llm import Llama, LlamaConfig
from cora_jax.train import mesh as M
from cora_jax.train import steps as S
from cora_jax.train.batches import TrainOrder
from cora_jax.train.models import place_model
from cora_jax.train.optim import OptimConfig, decay_mask, make_optimizer, make_schedule


def test_warmup_cosine_schedule_matches_the_reference_values():
    sched = make_schedule(OptimConfig(lr=1e-3, warmup_init_lr=1e-5, warmup_steps=200, min_lr=8e-5, decay_steps=2200))
    np.testing.assert_allclose(float(sched(0)), 1e-5, rtol=1e-5)
    np.testing.assert_allclose(float(sched(100)), 1e-5 + 0.5 * (1e-3 - 1e-5), rtol=1e-5)  # linear, not restarting
    np.testing.assert_allclose(float(sched(200)), 1e-3, rtol=1e-5)
    np.testing.assert_allclose(float(sched(1200)), 8e-5 + 0.5 * (1e-3 - 8e-5), rtol=1e-5)  # cosine midpoint
    np.testing.assert_allclose(float(sched(2200)), 8e-5, rtol=1e-5)
    np.testing.assert_allclose(float(sched(5000)), 8e-5, rtol=1e-5)


def _model(targets: str = "qkvo") -> CoRA:
    llm = Llama(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32), rngs=nnx.Rngs(0))
    gen = GeneratorConfig(num_layers=1, hidden=16, num_heads=2, ffn_dim=16)
    return CoRA(CoRAConfig(generator=gen, rank=4, alpha=8.0, targets=targets), llm, 8, answer_id=5, rngs=nnx.Rngs(1))


def test_decay_mask_covers_matrices_not_norms_or_biases():
    _, trainable, _ = nnx.split(_model(), TRAINABLE, ...)
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(decay_mask(trainable))[0]}
    decayed = {k for k, v in flat.items() if v}
    assert any("['p']['q_proj']" in k for k in decayed)
    assert any("['queries']" in k for k in decayed)
    assert any("['proj']['kernel']" in k for k in decayed)
    assert not any("norm" in k or "bias" in k for k in decayed)
    assert any("['query_norm']['scale']" in k for k in flat) and any("['proj']['bias']" in k for k in flat)


def _batch(seed=0, B=4, T=6):
    rng = np.random.default_rng(seed)
    mask = np.ones((B, T), np.int32)
    mask[0, :2] = 0
    return Batch(rng.integers(2, 40, (B, T)).astype(np.int32), mask, label=np.array([1, 0, 1, 0], np.float32),
                 e_u=rng.standard_normal((B, 8)).astype(np.float32), e_i=rng.standard_normal((B, 8)).astype(np.float32))


def test_train_steps_change_only_generator_and_p():
    model = _model()
    _, trainable, frozen = nnx.split(model, TRAINABLE, ...)
    frozen_before = jax.tree.map(np.array, nnx.to_pure_dict(frozen))
    before = jax.tree.map(np.array, nnx.to_pure_dict(trainable))
    tx = make_optimizer(OptimConfig(lr=1e-2, warmup_init_lr=1e-2, warmup_steps=1, decay_steps=10, weight_decay=0.0))
    mesh = M.make_mesh(M.MeshConfig(fsdp=1))  # one device
    graphdef, st = place_model(model, tx, mesh)
    trainable, opt_state, frozen = st.trainable, st.opt_state, st.frozen
    step = S.make_sharded_train_step(S.loss_fn(graphdef), tx, st, mesh)

    # gradient of step 1: all P zero -> the generator gets exactly no gradient (docs/reference.md#where-g-goes), P does
    def loss(tr):
        return optax.sigmoid_binary_cross_entropy(
            nnx.merge(graphdef, tr, frozen)(*(jnp.asarray(getattr(_batch(), k)) for k in ("ids", "mask", "e_u", "e_i"))),
            _batch().label).mean()
    grads = nnx.to_pure_dict(jax.jit(jax.grad(loss))(trainable))
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads["generator"]))
    assert all(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["p"]))

    for s in (1, 2):
        trainable, opt_state, l = step(trainable, opt_state, frozen, M.shard_batch(_batch(s), mesh), jax.random.key(s))
        assert np.isfinite(float(l))
    after = jax.tree.map(np.array, nnx.to_pure_dict(trainable))
    # the frozen LLM is bit-identical; every P and the generator's matrices moved
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, nnx.to_pure_dict(frozen)), frozen_before)
    for t in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert np.any(after["p"][t] != before["p"][t])
    assert np.any(after["generator"]["proj"]["kernel"] != before["generator"]["proj"]["kernel"])
    assert np.any(after["generator"]["blocks"][0]["intermediate"]["kernel"] != before["generator"]["blocks"][0]["intermediate"]["kernel"])


def test_train_order_is_a_deterministic_function_of_step_and_seed():
    lengths = np.random.default_rng(0).integers(5, 50, 103)
    a, b = TrainOrder(lengths, 8, seed=3, bucket=True), TrainOrder(lengths, 8, seed=3, bucket=True)
    assert a.per_pass == 12
    first_pass = np.concatenate([a.indices(s) for s in range(1, 13)])
    assert len(set(first_pass.tolist())) == 96  # each kept row once per pass
    for s in (1, 5, 13, 30, 7):  # out-of-order access gives the same batches
        np.testing.assert_array_equal(a.indices(s), b.indices(s))
    assert not np.array_equal(np.sort(a.indices(13)), np.sort(TrainOrder(lengths, 8, seed=4, bucket=True).indices(13)))
    spread = [np.ptp(lengths[a.indices(s)]) for s in range(1, 13)]
    assert np.mean(spread) < 0.3 * np.ptp(lengths)  # bucketed: similar lengths within a batch
