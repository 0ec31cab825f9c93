"""What a checkpoint holds of a training run and how it comes back: the trainable parameters, the optimiser
state and the dropout key (TrainState), the early-stopping counters, and the loss offset set at step 0."""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cora_jax.train import steps as S
from cora_jax.train.checkpoint import RunCheckpoints
from cora_jax.train.config import RESUMABLE_FIELDS, with_defaults


def intact_meta(ckpt: RunCheckpoints, step: int, config: dict) -> dict:
    """Meta of step, after checking that it was written by `config` (ConfigMismatchError) and that
    none of its files is missing or truncated (CheckpointReadError)."""
    meta = ckpt.check_config(step, config, RESUMABLE_FIELDS, normalize=with_defaults)
    ckpt.verify(step)
    return meta


def calibrated_offset(base_scores: np.ndarray, labels: np.ndarray) -> float:
    """The loss offset under which the base scores predict, on average, the rows' positive rate."""
    rate = float(np.clip(labels.mean(), 1e-3, 1 - 1e-3))
    return math.log(rate / (1 - rate)) - float(base_scores.mean())


def set_loss_offset(trainable, st: S.ShardedState, value: float):
    pure = nnx.to_pure_dict(trainable)
    pure["loss_offset"] = jnp.asarray(value, jnp.float32)
    nnx.replace_by_pure_dict(trainable, pure)
    return jax.device_put(trainable, st.trainable_sh)


@dataclasses.dataclass
class EarlyStopping:
    """The counters early stopping keeps across evaluations (checkpointed in each step's meta)."""

    best_auc: float = -math.inf
    best_step: int | None = None
    bad_evals: int = 0
    last_auc: float | None = None

    def record(self, step: int, auc: float) -> None:
        if auc > self.best_auc:
            self.best_auc, self.best_step, self.bad_evals = auc, step, 0
        else:
            self.bad_evals += 1
        self.last_auc = auc


@dataclasses.dataclass
class TrainState:
    """Everything a training step reads and writes besides the frozen weights and the batch."""

    step: int
    trainable: nnx.State
    opt_state: optax.OptState
    key: jax.Array                   # dropout: step s draws from fold_in(key, s)
    early_stopping: EarlyStopping

    def templates(self) -> tuple[dict, dict]:
        """The checkpoint's two array items: the pure-dict parameters, and what only resuming needs (optimiser-state
        leaves, raw key data on the host). Being the live (placed) arrays, they are also the restore templates:
        their shardings are the targets."""
        return (nnx.to_pure_dict(self.trainable),
                {"opt": jax.tree.leaves(self.opt_state), "rng": np.asarray(jax.random.key_data(self.key))})

    def checkpoint(self) -> tuple[dict, dict]:
        """templates() with copies of the arrays (on their devices, same shardings), because the async save may
        still be reading them when the next step donates the buffers."""
        return jax.tree.map(lambda x: x.copy(), self.templates())

    @classmethod
    def from_checkpoint(cls, params: dict, resume: dict, meta: dict, st: S.ShardedState) -> TrainState:
        """The state a restored checkpoint (its two array items and meta) holds, on st's shardings."""
        trainable = st.trainable
        nnx.replace_by_pure_dict(trainable, params)
        opt_state = jax.tree.unflatten(jax.tree.structure(st.opt_state), resume["opt"])
        trainable, opt_state = jax.device_put((trainable, opt_state), (st.trainable_sh, st.opt_sh))
        return cls(meta["step"], trainable, opt_state, jax.random.wrap_key_data(jnp.asarray(resume["rng"])),
                   EarlyStopping(**meta["early_stopping"]))
