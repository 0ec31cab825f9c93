"""The run's recommender: CoRA or a baseline built around the frozen LLM (with a stage-1 LoRA loaded and
frozen where the method asks for one), placed on the device mesh, or restored from a checkpoint for scoring."""
from __future__ import annotations

import pathlib

import jax
import numpy as np
import optax
from flax import nnx

from cora_jax.cora import TRAINABLE, CoRA
from cora_jax.train import mesh as M
from cora_jax.train import steps as S
from cora_jax.train.checkpoint import RunCheckpoints, trained_best_step
from cora_jax.train.config import TrainConfig
from cora_jax.train.setup import Setup, SetupError, load_run_config


def build_model(cfg: TrainConfig, setup: Setup, frozen_lora: dict | None = None) -> nnx.Module:
    """The run's recommender (CoRA or a baseline) around the frozen setup.llm, with fresh trainables
    (and, for mc.lora_from, that run's LoRA loaded and frozen; `frozen_lora`: that LoRA already in
    hand, as load_frozen_lora returns it, e.g. from an exported adapter)."""
    from cora_jax.baselines import CoLLM, PersonPrompt, Prompt4NR, TALLRec

    mc, rngs = cfg.method, nnx.Rngs(params=cfg.seed)
    if mc.kind == "cora":
        return CoRA(cfg.model, setup.llm, setup.cf.dim, setup.answer_id, rngs=rngs)
    lora = None if mc.lora_from is None else frozen_lora if frozen_lora is not None else load_frozen_lora(mc, setup)
    if mc.kind == "collm":
        return CoLLM(mc, setup.llm, setup.answer_id, setup.cf.dim, rngs=rngs, loaded_lora=lora)
    if mc.kind == "prompt4nr":
        return Prompt4NR(mc, setup.llm, setup.answer_id, rngs=rngs, loaded_lora=lora)
    if mc.kind == "personprompt":
        ds = setup.dataset
        return PersonPrompt(mc, setup.llm, setup.answer_id, ds.user_num, ds.item_num, rngs=rngs, loaded_lora=lora)
    return TALLRec(mc, setup.llm, setup.answer_id, rngs=rngs, loaded_lora=lora)  # tallrec, binllm


def load_frozen_lora(mc, setup: Setup) -> dict:
    """{"a": {target: [L, d_in, r]}, "b": {...}} of the best checkpoint of the LoRA run mc.lora_from
    (TALLRec: CoLLM's stage 1), as host arrays."""
    from cora_jax.baselines import CF_METHODS

    run_dir = mc.lora_from
    run = pathlib.Path(run_dir)
    src = load_run_config(run, "--method.lora-from")
    if src.method.kind == "cora" or src.method.lora_from is not None:
        raise SetupError(f"method.lora_from {run_dir!r}: that run ({src.method.kind}"
                         f"{', itself with a frozen LoRA' if src.method.lora_from else ''}) trained no LoRA of its own")
    if src.method.lora != mc.lora:
        raise SetupError(f"method.lora_from {run_dir!r} trained a LoRA {src.method.lora}, but this run asks for {mc.lora}")
    best = trained_best_step(run, f"method.lora_from {run_dir!r}")
    if setup.cf is None and src.method.kind in CF_METHODS:
        raise SetupError(f"method.lora_from {run_dir!r}: that {src.method.kind} run needs the CF model, which this "
                         f"method does not load; take the LoRA of a TALLRec run")
    model = build_model(src, setup)  # only its trainable parameters are restored, its prompt machinery is not used
    _, st = restore_trainable(run, best, model, M.make_mesh(M.MeshConfig()))
    lora = nnx.to_pure_dict(st.trainable)["lora"]
    return jax.tree.map(np.asarray, {"a": dict(lora["a"]), "b": dict(lora["b"])})


def place_model(model: nnx.Module, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh):
    """(graphdef, S.ShardedState): the model's trainable / frozen parameters and a fresh `tx` state
    sharded over `mesh`. The model's frozen (LLM) variables are pointed at the placed arrays, so the
    LLM is held once, sharded, by the model and by anything else sharing it (Setup.llm)."""
    graphdef, trainable, frozen = nnx.split(model, TRAINABLE, ...)
    st = S.place(trainable, frozen, tx, mesh)
    nnx.update(model, st.frozen)
    return graphdef, st


def restore_trainable(run_dir: str | pathlib.Path, step: int, model: nnx.Module, mesh: jax.sharding.Mesh):
    """(graphdef, S.ShardedState) of `model` placed on `mesh` for scoring (no optimiser state), with the
    trainable parameters of checkpoint `step` restored straight into their shards (the checkpoint's
    optimiser state is not read)."""
    graphdef, st = place_model(model, optax.identity(), mesh)
    ckpt = RunCheckpoints(run_dir, async_save=False, writable=False)
    try:
        params = ckpt.restore_params(step, nnx.to_pure_dict(st.trainable))
    finally:
        ckpt.close()
    nnx.replace_by_pure_dict(st.trainable, params)
    return graphdef, st
