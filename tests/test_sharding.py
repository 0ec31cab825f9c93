"""Sharded CoRA steps on 8 simulated CPU devices (tests/conftest.py): every mesh computes the same
loss, gradients, AdamW update and scores as one device; the frozen weights, trainables, optimiser
state and batches really are split; Orbax restores a checkpoint written on one mesh onto another;
train() on a mesh (and resumed onto another) ends like train() on one device.
"""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from cora_jax.batch import Batch
from cora_jax.cf import CFTrainConfig, train_cf
from cora_jax.cora import G_AXES, TRAINABLE, CoRA, CoRAConfig, GeneratorConfig
from cora_jax.data import PromptConfig, load_dataset, split_prompts
from cora_jax.train import SetupError, TrainConfig, load_setup, train
from cora_jax import sharding as SH
from cora_jax.train import mesh as M
from cora_jax.train import steps as S
from cora_jax.train.optim import OptimConfig
from cora_jax.train.tiny import tiny_dataset, tiny_llm_dir
from llm_helpers import tiny_model

MESHES = [(1, 1), (8, 1), (2, 4), (1, 8)]  # (data, fsdp)
B, T, CF = 8, 16, 8
TOL = 1e-5


def _model() -> CoRA:
    cfg = CoRAConfig(generator=GeneratorConfig(num_layers=1, hidden=16, num_heads=2, ffn_dim=32), rank=4, alpha=8.0)
    model = CoRA(cfg, tiny_model(seed=3), CF, answer_id=5, rngs=nnx.Rngs(1))
    # P starts at zero, which would leave the generator without gradient: give it random values.
    key = jax.random.key(7)
    for t in model.targets:
        key, sub = jax.random.split(key)
        var = getattr(model.p, t)
        var.set_value(0.3 * jax.random.normal(sub, var.shape))
    return model


def _batch() -> Batch:
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, T + 1, B)
    mask = (np.arange(T)[None] >= T - lengths[:, None]).astype(np.int32)  # left padding
    ids = np.where(mask > 0, rng.integers(2, 61, (B, T)), 0).astype(np.int32)
    e_u, e_i = rng.standard_normal((B, CF)).astype(np.float32), rng.standard_normal((B, CF)).astype(np.float32)
    return Batch(ids, mask, label=rng.integers(0, 2, B).astype(np.float32), e_u=e_u, e_i=e_i)


def _mesh(data: int, fsdp: int):
    devices = jax.devices()[: data * fsdp]
    return M.make_mesh(M.MeshConfig(data=data, fsdp=fsdp, tensor=1), devices=devices)


STEP_MESHES = [(2, 4)]  # the jitted AdamW step (compiles are slow here); the reference update is eager
TX = optax.adamw(1e-2, weight_decay=1e-3)


def _run(model_states, data: int, fsdp: int) -> dict:
    """Loss, grads and eval scores on a (data, fsdp) mesh (+ one AdamW step on STEP_MESHES)."""
    mesh = _mesh(data, fsdp)
    graphdef, trainable, frozen = model_states
    # fresh device buffers per mesh: the train step donates (deletes) its inputs
    trainable, frozen = jax.tree.map(np.array, trainable), jax.tree.map(np.array, frozen)
    tx = TX
    st = S.place(trainable, frozen, tx, mesh)
    batch = M.shard_batch(_batch(), mesh)
    key = jax.random.key(11)
    loss_fn = S.loss_fn(graphdef)
    loss, grads = S.make_sharded_grad_fn(loss_fn, st, mesh)(st.trainable, st.frozen, batch, key)
    scores = S.make_sharded_eval_step(S.eval_fn(graphdef), st, mesh)(st.trainable, st.frozen, batch)
    host = lambda t: jax.tree.map(np.asarray, nnx.to_pure_dict(t))  # noqa: E731
    out = {"mesh": mesh, "st": st, "batch": batch, "loss": float(loss), "grads": host(grads), "grads_dev": grads,
           "scores": np.asarray(scores), "scores_dev": scores}
    if (data, fsdp) == (1, 1):  # reference AdamW update, eagerly from the single-device gradients
        updates, _ = tx.update(grads, st.opt_state, st.trainable)
        out["updated"] = host(optax.apply_updates(st.trainable, updates))
    if (data, fsdp) in STEP_MESHES:
        step = S.make_sharded_train_step(loss_fn, tx, st, mesh)
        new_tr, new_opt, step_loss = step(st.trainable, st.opt_state, st.frozen, batch, key)
        assert st.trainable["p"]["q_proj"][...].is_deleted()  # donated
        out.update(step_loss=float(step_loss), updated=host(new_tr), updated_dev=new_tr, opt_dev=new_opt)
    return out


@pytest.fixture(scope="module")
def runs() -> dict:
    assert len(jax.devices()) == 8, "tests/conftest.py must set 8 simulated CPU devices"
    states = nnx.split(_model(), TRAINABLE, ...)
    out = {m: _run(states, *m) for m in MESHES}
    out["model"] = nnx.merge(*states)
    return out


def _assert_trees_close(a, b, what: str):
    fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb):
        np.testing.assert_allclose(x, y, rtol=TOL, atol=TOL, err_msg=f"{what} {jax.tree_util.keystr(path)}")


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", MESHES[1:])
def test_same_numbers_as_one_device(runs, mesh_shape):
    ref, got = runs[(1, 1)], runs[mesh_shape]
    assert abs(got["loss"] - ref["loss"]) < TOL
    np.testing.assert_allclose(got["scores"], ref["scores"], rtol=TOL, atol=TOL)
    _assert_trees_close(got["grads"], ref["grads"], "grad")
    if mesh_shape in STEP_MESHES:
        assert abs(got["step_loss"] - ref["loss"]) < TOL
        _assert_trees_close(got["updated"], ref["updated"], "updated param")


@pytest.mark.slow
def test_gradients_reach_generator_and_p(runs):
    """The comparison above is only meaningful if the gradients are not all zero."""
    g = runs[(1, 1)]["grads"]
    assert np.abs(g["generator"]["proj"]["kernel"]).max() > 1e-6
    assert np.abs(g["generator"]["blocks"][0]["intermediate"]["kernel"]).max() > 1e-6
    assert all(np.abs(g["p"][t]).max() > 1e-6 for t in ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert "llm" not in g  # the frozen LLM is never differentiated


@pytest.mark.slow
def test_sharded_steps_match_unsharded_cora_call(runs):
    """batch_scores, what the steps call, is numerically CoRA.__call__, in eval and train mode."""
    graphdef, state = nnx.split(runs["model"])
    b, key = _batch(), jax.random.key(4)

    @jax.jit
    def both(state):
        model = nnx.merge(graphdef, state)
        return (model(b.ids, b.mask, b.e_u, b.e_i), model.batch_scores(b, rng=key),
                model(b.ids, b.mask, b.e_u, b.e_i, rng=key))
    ref_eval, ours_train, ref_train = both(state)
    np.testing.assert_allclose(runs[(1, 1)]["scores"], np.asarray(ref_eval), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(np.asarray(ours_train), np.asarray(ref_train), rtol=TOL, atol=TOL)
    assert np.abs(np.asarray(ours_train) - np.asarray(ref_eval)).max() > 1e-4  # dropout really was on


def _spec(x) -> P:
    assert isinstance(x.sharding, NamedSharding)
    return x.sharding.spec


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape,fsdp", [((2, 4), 4), ((1, 8), 8)])
def test_frozen_weights_are_fsdp_sharded(runs, mesh_shape, fsdp):
    st = runs[mesh_shape]["st"]
    llm = st.frozen["llm"]
    emb = llm["model"]["embed_tokens"]["embedding"][...]
    q = llm["model"]["layers"]["self_attn"]["q_proj"]["kernel"][...]
    down = llm["model"]["layers"]["mlp"]["down_proj"]["kernel"][...]
    assert _spec(emb) == P(None, "fsdp")             # [vocab, embed]
    assert _spec(q) == P(None, "fsdp")               # [layers, embed, q_heads]
    assert _spec(down) == P(None, None, "fsdp")      # [layers, mlp, embed]
    # each device really holds 1/fsdp of the weight
    assert q.addressable_shards[0].data.shape == (q.shape[0], q.shape[1] // fsdp, q.shape[2])
    assert len({s.device for s in q.addressable_shards}) == 8


@pytest.mark.slow
def test_trainables_and_optimizer_state_follow_rules(runs):
    r = runs[(2, 4)]
    tr, opt = r["updated_dev"], r["opt_dev"]
    assert _spec(tr["generator"]["proj"]["kernel"][...]) == P(None, "fsdp")   # [hidden, d_model * r]
    assert _spec(tr["p"]["o_proj"][...]) == P(None, None, "fsdp")             # [L, r, d_model]
    assert _spec(tr["generator"]["queries"][...]) == P()
    mu = opt[0].mu  # AdamW's first moment: same shardings as the parameters
    assert _spec(mu["generator"]["proj"]["kernel"][...]) == P(None, "fsdp")
    assert _spec(mu["p"]["o_proj"][...]) == P(None, None, "fsdp")
    assert _spec(r["grads_dev"]["generator"]["proj"]["kernel"][...]) == P(None, "fsdp")


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape,spec", [((8, 1), P("data")), ((2, 4), P(("data", "fsdp"))), ((1, 8), P("fsdp"))])
def test_batch_and_scores_are_batch_sharded(runs, mesh_shape, spec):
    r = runs[mesh_shape]
    assert _spec(r["batch"].ids) == spec
    assert _spec(r["scores_dev"]) == spec
    assert r["batch"].e_u.addressable_shards[0].data.shape == (1, CF)


def test_g_is_sharded_on_batch(runs):
    """CoRA pins its per-sample factors G to the activation rules where it makes them, when traced under a
    mesh as the sharded steps are."""
    r = runs[(1, 8)]
    graphdef = nnx.split(runs["model"], TRAINABLE, ...)[0]

    def g_of(trainable, frozen, b):
        return nnx.merge(graphdef, trainable, frozen).delta(b.e_u, b.e_i).a["attn_in"]
    g = S.MeshBound(r["mesh"], jax.jit(g_of))(r["st"].trainable, r["st"].frozen, r["batch"])
    assert _spec(g) == P("fsdp")
    assert g.addressable_shards[0].data.shape == (1, *g.shape[1:])
    x = jnp.ones((B, 24, 4))
    assert SH.constrain(x, G_AXES) is x  # outside a mesh: left as it is


@pytest.mark.slow
def test_orbax_restore_onto_another_mesh(runs, tmp_path):
    src, dst = runs[(2, 4)], runs[(1, 8)]
    state = {"frozen": nnx.to_pure_dict(src["st"].frozen), "trainable": nnx.to_pure_dict(src["updated_dev"]),
             "opt_mu": nnx.to_pure_dict(src["opt_dev"][0].mu)}
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp_path / "ckpt", state)
    ckptr.wait_until_finished()
    tr_sh = nnx.to_pure_dict(dst["st"].trainable_sh)
    target_sh = {"frozen": nnx.to_pure_dict(dst["st"].frozen_sh), "trainable": tr_sh, "opt_mu": tr_sh}
    restored = ckptr.restore(tmp_path / "ckpt", S.abstract_with_shardings(state, target_sh))
    ckptr.close()
    for (path, a), (_, b), (_, sh) in zip(jax.tree_util.tree_flatten_with_path(state)[0],
                                          jax.tree_util.tree_flatten_with_path(restored)[0],
                                          jax.tree_util.tree_flatten_with_path(target_sh)[0]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
        assert b.sharding == sh, jax.tree_util.keystr(path)
    q = restored["frozen"]["llm"]["model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.mesh.shape["fsdp"] == 8 and q.addressable_shards[0].data.shape[1] == q.shape[1] // 8


def test_rules_drop_axes_that_do_not_fit():
    mesh = _mesh(2, 4)
    # 10 is not divisible by fsdp=4 -> replicated; a mesh axis is used once per array
    assert SH.spec_for(("vocab", "embed"), (61, 10), mesh, SH.PARAM_RULES) == P()
    assert SH.spec_for(("embed", "gen_out"), (24, 24), mesh, SH.PARAM_RULES) == P("fsdp")
    assert SH.spec_for(("batch", None), (8, 3), mesh, SH.ACTIVATION_RULES) == P(("data", "fsdp"))
    with pytest.raises(ValueError, match="do not match"):
        SH.spec_for(("embed",), (4, 4), mesh, SH.PARAM_RULES)


def test_mesh_config_validation():
    assert M.MeshConfig(data=2, fsdp=-1).shape(8) == (2, 4, 1)
    assert M.MeshConfig(data=-1, fsdp=2, tensor=2).shape(8) == (2, 2, 2)
    with pytest.raises(ValueError, match="at most one"):
        M.MeshConfig(data=-1, fsdp=-1).shape(8)
    with pytest.raises(ValueError, match="3 devices"):
        M.MeshConfig(data=2, fsdp=2, tensor=1).shape(3)
    with pytest.raises(ValueError, match="--tensor must be >= 1 or -1, got 0"):
        M.MeshConfig(tensor=0).shape(8)
    with pytest.raises(ValueError, match="not divisible"):
        M.shard_batch(Batch(np.zeros((6, 2), np.int32), np.ones((6, 2), np.int32)), _mesh(2, 4))


# ----------------------------------------------------------------- the training loop on a mesh
TRAIN_STEPS = 4


@pytest.fixture(scope="module")
def tiny_train(tmp_path_factory):
    """A tiny run's config (random Llama dir, ML-100K rows, MF) and its loaded Setup."""
    root = tmp_path_factory.mktemp("mesh-train")
    data = tiny_dataset(root / "data", rows={"train": 64, "valid": 16, "valid_small": 16, "test": 8})
    ds = load_dataset(data)
    llm = tiny_llm_dir(root / "llm", split_prompts(ds, ds["train"], PromptConfig(domain=ds.domain, max_titles=3)))
    train_cf(CFTrainConfig(dim=8, max_epochs=1, progress=False), str(data), root / "cf")
    gen = GeneratorConfig(num_layers=1, hidden=16, num_heads=2, ffn_dim=32)
    cfg = TrainConfig(data=str(data), llm=str(llm), cf=str(root / "cf"), model=CoRAConfig(generator=gen, rank=4, alpha=8.0),
                      optim=OptimConfig(lr=1e-2, warmup_steps=2, decay_steps=20), max_titles=3, batch_size=8,
                      eval_batch_size=16, eval_every=2, patience=100, max_steps=TRAIN_STEPS, max_wall_minutes=None,
                      length_bucket=256, async_checkpoint=False, progress=False)
    return root, cfg, load_setup(cfg)


def _trained_params(run) -> dict:
    mgr = ocp.CheckpointManager(run / "checkpoints")
    params = mgr.restore(TRAIN_STEPS, args=ocp.args.Composite(params=ocp.args.StandardRestore()))["params"]
    mgr.close()
    return jax.tree.map(np.asarray, params)


def _eval_log(run) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["valid_auc"] for r in records if r["event"] == "eval"}


@pytest.mark.slow
def test_train_on_a_mesh_matches_one_device_and_resumes_onto_another_mesh(tiny_train, monkeypatch, capsys):
    """train() on one device vs a run started on one device and resumed on data 2 x fsdp 4: the same
    trained parameters and valid AUCs; the resumed run's frozen LLM and trainables really are split."""
    root, cfg, setup = tiny_train
    one = train(dataclasses.replace(cfg, out=str(root / "one"), mesh=M.MeshConfig(fsdp=1)), setup)
    moved = dataclasses.replace(cfg, out=str(root / "moved"), mesh=M.MeshConfig(fsdp=1), max_wall_minutes=0.0)
    assert train(moved, setup)["stop_reason"] == "wall_budget"  # stops after step 1's evaluation + checkpoint
    assert f"stopped training at step 1 of {cfg.max_steps}" in capsys.readouterr().err  # said loudly

    placed = []  # the ShardedState and mesh train() builds its step from
    make_step = S.make_sharded_train_step
    monkeypatch.setattr(S, "make_sharded_train_step",
                        lambda loss, tx, st, mesh: placed.append((st, mesh)) or make_step(loss, tx, st, mesh))
    got = train(dataclasses.replace(moved, mesh=M.MeshConfig(data=2, fsdp=4), max_wall_minutes=None), setup)

    st, mesh = placed[0]
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    q = st.frozen["llm"]["model"]["layers"]["self_attn"]["q_proj"]["kernel"][...]  # [layers, embed, q_heads]
    assert _spec(q) == P(None, "fsdp") and q.addressable_shards[0].data.shape[1] == q.shape[1] // 4
    assert len({s.device for s in q.addressable_shards}) == 8
    assert st.trainable_sh["generator"]["proj"]["kernel"].get_value().spec == P(None, "fsdp")
    assert st.trainable_sh["p"]["o_proj"].get_value().spec == P(None, None, "fsdp")

    assert one["steps"] == got["steps"] == TRAIN_STEPS
    assert abs(one["last_valid_auc"] - got["last_valid_auc"]) <= TOL
    auc_one, auc_got = _eval_log(root / "one"), _eval_log(root / "moved")
    assert sorted(auc_got) == [1, 2, 4] and all(abs(auc_got[s] - auc_one[s]) <= TOL for s in (2, 4))
    _assert_trees_close(_trained_params(root / "moved"), _trained_params(root / "one"), "trained param")
    assert np.abs(_trained_params(root / "one")["p"]["q_proj"]).max() > 1e-4  # P really trained


@pytest.mark.slow
def test_llm_loads_straight_into_its_shardings(tiny_train):
    """load_setup(mesh=...) places every LLM weight, as it is read, in the sharding the step's placement
    gives it (each device receives only its slice); the values are those of a load onto one device."""
    root, cfg, setup = tiny_train
    mesh = _mesh(2, 4)
    loaded = nnx.state(load_setup(cfg, mesh=mesh).llm, nnx.Param)
    want = M.state_shardings(loaded, mesh)
    ref = nnx.state(load_setup(cfg).llm, nnx.Param)
    for got, sharding, one in zip(jax.tree.leaves(loaded), jax.tree.leaves(want), jax.tree.leaves(ref), strict=True):
        assert got.sharding == sharding
        np.testing.assert_array_equal(np.asarray(got), np.asarray(one))
    q = loaded["model"]["layers"]["self_attn"]["q_proj"]["kernel"][...]  # [layers, embed, q_heads]
    assert _spec(q) == P(None, "fsdp") and q.addressable_shards[0].data.shape[1] == q.shape[1] // 4
    assert len({s.device for s in q.addressable_shards}) == 8


@pytest.mark.slow
def test_batch_size_not_divisible_by_the_mesh_is_refused(tiny_train):
    root, cfg, _ = tiny_train
    with pytest.raises(SetupError, match=r"batch_size = 4 is not divisible .*data 1 x fsdp 8 x tensor 1"):
        train(dataclasses.replace(cfg, out=str(root / "bad"), batch_size=4, mesh=M.MeshConfig(fsdp=8)))
    with pytest.raises(SetupError, match=r"eval_batch_size = 12 is not divisible .*data 2 x fsdp 4"):
        train(dataclasses.replace(cfg, out=str(root / "bad"), eval_batch_size=12, mesh=M.MeshConfig(data=2, fsdp=4)))
    assert not (root / "bad").exists()  # refused before anything was written
