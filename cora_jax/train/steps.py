"""Sharded (jitted) training and scoring steps of a recommender (CoRA or a baseline) on a device mesh: its
trainable / frozen parameters and optimiser state placed by the parameter rules, the steps traced under the
mesh so that the layers' logical constraints (cora_jax.sharding.constrain: CoRA's G) apply."""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from cora_jax.cora import training_loss
from cora_jax.sharding import ACTIVATION_RULES, PARAM_RULES, Rules
from cora_jax.train import mesh as M


def loss_fn(graphdef) -> Callable:
    """(trainable, frozen, batch, key) -> the model's training loss (cora_jax.cora.training_loss)."""
    return lambda trainable, frozen, b, key: training_loss(nnx.merge(graphdef, trainable, frozen), b, key)


def eval_fn(graphdef) -> Callable:
    """(trainable, frozen, batch) -> eval-mode scores [B]."""
    return lambda trainable, frozen, b: nnx.merge(graphdef, trainable, frozen).batch_scores(b)


class MeshBound:
    """A jitted function called, and lowered ahead of time, with `mesh` as the current mesh, so that the
    layers' logical constraints resolve against it."""

    def __init__(self, mesh: jax.sharding.Mesh, jitted: Callable):
        self.mesh, self.jitted = mesh, jitted

    def __call__(self, *args):
        with jax.set_mesh(self.mesh):
            return self.jitted(*args)

    def lower(self, *args):
        with jax.set_mesh(self.mesh):
            return self.jitted.lower(*args)


@dataclasses.dataclass(frozen=True)
class ShardedState:
    """Trainable/frozen parameters and optimiser state placed on a mesh, with their shardings."""

    trainable: Any           # nnx.State of the trained parameters (generator, P, own A)
    frozen: Any              # nnx.State of everything else (the LLM)
    opt_state: Any           # optax state of `trainable`
    trainable_sh: Any        # same-structure NamedShardings
    frozen_sh: Any
    opt_sh: Any


def place(trainable, frozen, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
          rules: Rules = PARAM_RULES, opt_state: Any = None) -> ShardedState:
    """Shard both states by `rules` and create (or re-place) the optimiser state beside them."""
    tr_sh, fr_sh = M.state_shardings(trainable, mesh, rules), M.state_shardings(frozen, mesh, rules)
    trainable, frozen = jax.device_put(trainable, tr_sh), jax.device_put(frozen, fr_sh)
    abstract_opt = jax.eval_shape(tx.init, trainable) if opt_state is None else opt_state
    opt_sh = M.opt_state_shardings(tx, abstract_opt, tr_sh, mesh)
    if opt_state is None:
        opt_state = jax.jit(tx.init, out_shardings=opt_sh)(trainable)
    else:
        opt_state = jax.device_put(opt_state, opt_sh)
    return ShardedState(trainable, frozen, opt_state, tr_sh, fr_sh, opt_sh)


def make_sharded_train_step(loss_fn: Callable, tx: optax.GradientTransformation, st: ShardedState,
                            mesh: jax.sharding.Mesh, rules: Rules = ACTIVATION_RULES) -> Callable:
    """Jitted (trainable, opt_state, frozen, batch, key) -> (trainable, opt_state, loss).

    loss_fn(trainable, frozen, batch, key) -> scalar. Gradients of `trainable` only (the frozen LLM
    is a non-differentiated argument). Explicit in/out shardings; trainable and opt_state are
    donated, so their buffers are updated in place.
    """
    rep, bsh = NamedSharding(mesh, P()), M.batch_sharding(mesh, rules)

    @partial(jax.jit, in_shardings=(st.trainable_sh, st.opt_sh, st.frozen_sh, bsh, rep),
             out_shardings=(st.trainable_sh, st.opt_sh, rep), donate_argnums=(0, 1))
    def step(trainable, opt_state, frozen, b, key):
        loss, grads = jax.value_and_grad(loss_fn)(trainable, frozen, b, key)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss
    return MeshBound(mesh, step)


def make_sharded_grad_fn(loss_fn: Callable, st: ShardedState, mesh: jax.sharding.Mesh,
                         rules: Rules = ACTIVATION_RULES) -> Callable:
    """Jitted (trainable, frozen, batch, key) -> (loss, grads); grads sharded like `trainable`."""
    rep, bsh = NamedSharding(mesh, P()), M.batch_sharding(mesh, rules)
    return MeshBound(mesh, jax.jit(jax.value_and_grad(loss_fn), in_shardings=(st.trainable_sh, st.frozen_sh, bsh, rep),
                                out_shardings=(rep, st.trainable_sh)))


def make_sharded_eval_step(score_fn: Callable, st: ShardedState, mesh: jax.sharding.Mesh,
                           rules: Rules = ACTIVATION_RULES) -> Callable:
    """Jitted (trainable, frozen, batch) -> scores [B] (batch-sharded)."""
    bsh = M.batch_sharding(mesh, rules)
    return MeshBound(mesh, jax.jit(score_fn, in_shardings=(st.trainable_sh, st.frozen_sh, bsh), out_shardings=bsh))


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying concrete NamedShardings: the Orbax restore target that lands
    each restored array directly in its shards (an AbstractMesh does not work with Orbax 0.12)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)
