"""One CoRA training step, cora_jax's sharded step vs the PyTorch port of bench/torch_cora.py: same LLM,
generator, P (random, non-zero) and loss offset, same batch, dropout off, the demo preset's optimiser
(AdamW, decay mask, grad clipping, warmup schedule). The loss, the gradient of every trainable, the
parameters after the update (where the gradient is clear of Adam's eps; within 2 lr elsewhere) and Adam's
first moment agree to 1e-5 (float32), on a tiny random Llama and on the embedded SmolLM2-135M with real
ML-1M prompts."""
import dataclasses
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs.cora import CORA_MF_ML1M, DEMO_ML100K
from cora_jax.batch import Batch
from cora_jax.cora import CoRA, CoRAConfig, GeneratorConfig
from cora_jax.train import mesh as M
from cora_jax.train import steps as S
from cora_jax.train.models import place_model
from cora_jax.train.optim import decay_mask, make_optimizer
from llm_helpers import tiny_model

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import torch_cora  # noqa: E402

ATOL = 1e-5
OPTIM = DEMO_ML100K.optim  # the CoRA preset with clipping; step 1 runs at its warmup_init_lr


def _flat(tree) -> dict[str, np.ndarray]:
    """{"generator/blocks/0/...": host copy} of an nnx State (copies: the train step donates its input)."""
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(tree))[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.array(v) for path, v in leaves}


def _no_dropout(ccfg: CoRAConfig) -> CoRAConfig:
    return dataclasses.replace(ccfg, branch_dropout=0.0, generator=dataclasses.replace(ccfg.generator, dropout=0.0))


def _cora(llm, ccfg: CoRAConfig, cf_dim: int, answer_id: int, offset: float) -> CoRA:
    """CoRA with P ~ N(0, 0.02) (zero P would starve the generator of gradient) and the given loss offset."""
    model = CoRA(ccfg, llm, cf_dim, answer_id, rngs=nnx.Rngs(1))
    for i, t in enumerate(model.targets):
        p = getattr(model.p, t)
        p.set_value(0.02 * jax.random.normal(jax.random.key(10 + i), p.shape))
    model.loss_offset.set_value(jnp.float32(offset))
    return model


def _jax_step(model: CoRA, batch: Batch) -> dict:
    """cora_jax's training step on a 1-device mesh: parameters before and after, loss, gradients, Adam's
    first moment after the step (it holds the clipped gradient) and the weight-decay mask."""
    tx = make_optimizer(OPTIM)
    mesh = M.make_mesh(M.MeshConfig(fsdp=1))
    graphdef, st = place_model(model, tx, mesh)
    out = {"before": _flat(st.trainable), "decays": _flat(decay_mask(st.trainable))}
    loss_fn = S.loss_fn(graphdef)
    b, key = M.shard_batch(batch, mesh), jax.random.key(0)
    loss, grads = S.make_sharded_grad_fn(loss_fn, st, mesh)(st.trainable, st.frozen, b, key)
    after, opt_state, step_loss = S.make_sharded_train_step(loss_fn, tx, st, mesh)(
        st.trainable, st.opt_state, st.frozen, b, key)
    assert float(step_loss) == float(loss)  # the step took the gradients compared here
    return out | {"loss": float(loss), "grads": _flat(grads), "after": _flat(after),
                  "mu": _flat(optax.tree_utils.tree_get(opt_state, "mu"))}


def _torch_step(model: CoRA, cf_dim: int, jax_out: dict, batch: dict) -> dict:
    """The port loaded with cora_jax's parameters: loss, gradients, parameters and first moment after one step."""
    tm = torch_cora.TorchCoRA(model.llm, model.cfg, cf_dim, model.answer_id)
    assert set(tm.export()) == set(jax_out["before"]), "the port's trainables differ from cora_jax's"
    tm.load(jax_out["before"])
    tm.train()  # every dropout rate is 0
    opt = torch_cora.make_optimizer(tm, OPTIM)
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    wrong = [path for path, ps, _ in tm.trainables() if all(id(p) in decayed for p in ps) != jax_out["decays"][path]]
    assert not wrong, f"weight decay differs from cora_jax's mask on {wrong}"
    loss = torch_cora.backward(tm, batch)
    grads = tm.export(lambda p: p.grad)
    torch_cora.update(tm, opt, OPTIM, step=1)
    return {"loss": loss.item(), "grads": grads, "after": tm.export(),
            "mu": tm.export(lambda p: opt.state[p]["exp_avg"])}


def _max_diff(a: dict, b: dict) -> tuple[float, str]:
    return max((float(np.max(np.abs(a[k] - b[k]), initial=0.0)), k) for k in a)


def _check(model: CoRA, cf_dim: int, batch: dict) -> None:
    j = _jax_step(model, batch)
    t = _torch_step(model, cf_dim, j, batch)
    # (the cross-attention's query and key get exactly none: softmax over its single CF token is 1)
    moved = ["generator/proj/kernel", "generator/queries", "loss_offset", *(f"p/{name}" for name in model.targets)]
    assert all(np.any(j["grads"][k]) for k in moved), "no gradient to compare"
    # Step 1 moves a parameter by about lr * sign(g), lr = 1e-5 = ATOL, so the update is compared in units
    # of lr too, where both gradients are far above Adam's eps. Below it, float noise in g moves
    # g / (|g| + eps) anywhere in [-1, 1]: there "after" may differ by up to 2 lr.
    lr = torch_cora.learning_rate(OPTIM, 0)
    sure = {k: np.minimum(np.abs(j["grads"][k]), np.abs(t["grads"][k])) > 1e3 * OPTIM.eps for k in j["grads"]}
    coverage = {k: float(sure[k].mean()) for k in moved}
    assert min(coverage.values()) > 0.5, f"too few gradients above Adam's eps to check the update: {coverage}"
    diffs = {"loss": (abs(j["loss"] - t["loss"]), "loss"),
             **{name: _max_diff(j[name], t[name]) for name in ("grads", "mu")},
             "after": _max_diff(*({k: np.where(sure[k], side["after"][k], 0) for k in sure} for side in (j, t)))}
    near_zero = _max_diff(*({k: np.where(sure[k], 0, side["after"][k]) for k in sure} for side in (j, t)))
    assert near_zero[0] <= 2 * lr + ATOL, f"after, where |g| ~ eps: {near_zero}"
    diffs["update / lr"] = _max_diff(
        *({k: np.where(sure[k], side["after"][k] - j["before"][k], 0) / lr for k in sure} for side in (j, t)))
    norm = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in j["grads"].values()))
    report = (", ".join(f"{name} {d:.2e} ({k})" for name, (d, k) in diffs.items())
              + f"; gradient norm {norm:.3g} (clipped to {OPTIM.grad_clip})")
    print(f"\nmax |cora_jax - torch|: {report}")
    assert max(diffs[name][0] for name in ("loss", "grads", "after", "mu")) <= ATOL, report
    assert diffs["update / lr"][0] <= 0.05, report


def test_tiny_llama_train_step_matches_torch():
    llm = tiny_model(seed=0)
    gen = GeneratorConfig(num_layers=2, hidden=16, num_heads=4, ffn_dim=24)
    ccfg = _no_dropout(CoRAConfig(generator=gen, rank=4, alpha=8.0))
    cf_dim, B, T = 8, 4, 7
    rng = np.random.default_rng(0)
    mask = np.ones((B, T), np.int32)
    mask[0, :3] = 0  # left padding
    mask[2, :1] = 0
    batch = Batch(rng.integers(2, llm.config.vocab_size, (B, T)).astype(np.int32), mask,
                  label=np.array([1, 0, 1, 0], np.float32), e_u=rng.standard_normal((B, cf_dim)).astype(np.float32),
                  e_i=rng.standard_normal((B, cf_dim)).astype(np.float32))
    _check(_cora(llm, ccfg, cf_dim, answer_id=5, offset=0.3), cf_dim, batch)


def test_smollm2_train_step_matches_torch(ml1m_dir):
    from cora_jax.data import PromptConfig, load_dataset, split_prompts
    from cora_jax.llm import load_llm

    llm, tok = load_llm(None, progress=False)
    ds = load_dataset(ml1m_dir)
    split = ds["train"].take(np.arange(4))  # the first rows: histories of 0-1 titles, prompts of 57-70 tokens
    ids, mask = tok.batch(split_prompts(ds, split, PromptConfig(domain=ds.domain)))
    labels = split.label.astype(np.float32)
    assert 0 < labels.sum() < 4, "the batch should hold both labels"
    cf_dim = 256
    rng = np.random.default_rng(0)
    batch = Batch(ids, mask, label=labels, e_u=rng.standard_normal((4, cf_dim)).astype(np.float32),
                  e_i=rng.standard_normal((4, cf_dim)).astype(np.float32))
    # the preset's widths but 2 of its 8 (identical) generator blocks: all 8 add ~20 s of compiling and updating
    ccfg = _no_dropout(CORA_MF_ML1M.model)
    ccfg = dataclasses.replace(ccfg, generator=dataclasses.replace(ccfg.generator, num_layers=2))
    # offset near minus SmolLM2's base "Yes" logit, where training's calibration puts it (no saturated sigmoid)
    _check(_cora(llm, ccfg, cf_dim, tok.answer_token_id("Yes"), offset=-15.0), cf_dim, batch)
