"""What the training loop runs besides the step: the evaluate-and-checkpoint hook (valid AUC, early stopping,
the Orbax checkpoint), the wall-clock budget, the run's event log (metrics.jsonl) and the progress bar."""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from cora_jax.train import mesh as M
from cora_jax.train.batches import SplitInputs, TrainOrder
from cora_jax.train.checkpoint import RunCheckpoints
from cora_jax.train.config import TrainConfig
from cora_jax.train.scoring import score_rows
from cora_jax.train.state import TrainState

FINISHED = ("patience", "max_steps")  # stop reasons after which a rerun has nothing left to do


class EventLog:
    """The run's metrics.jsonl: one JSON event a line (start / resume, eval, end), written by process 0."""

    def __init__(self, path: pathlib.Path, main: bool):
        self.path, self.main = path, main

    def write(self, event: str, **fields) -> None:
        if self.main:
            with self.path.open("a") as f:
                f.write(json.dumps({"event": event, **fields, "time": time.time()}) + "\n")


def valid_metrics(inputs: SplitInputs, scores: np.ndarray) -> dict:
    from cora_jax.metrics import evaluate_split

    m = evaluate_split(inputs.split, scores)
    return {"valid_auc": m.auc, "valid_uauc": m.uauc, "valid_uauc_users": m.uauc_users}


@dataclasses.dataclass
class EvaluateAndCheckpoint:
    """Every eval_every steps (and on the last): score the valid rows, update early stopping, save a
    checkpoint whose meta says whether the run is finished, log the evaluation."""

    cfg: TrainConfig
    config: dict                     # the run's config as saved (checked again on resume)
    valid: SplitInputs
    score: Callable                  # (trainable, batch) -> scores
    order: TrainOrder
    schedule: Callable               # step -> learning rate (logged)
    ckpt: RunCheckpoints
    log: EventLog
    mesh: jax.sharding.Mesh
    pad_id: int
    progress: bool

    def due(self, step: int) -> bool:
        return step % self.cfg.eval_every == 0 or step == self.cfg.max_steps

    def __call__(self, state: TrainState, stop_reason: str | None, loss_avg: float, rate: float) -> str | None:
        """The stop reason after this evaluation: the one given, "patience", or None to go on."""
        cfg, es, step = self.cfg, state.early_stopping, state.step
        scores = score_rows(lambda b: self.score(state.trainable, b), self.valid, cfg.eval_batch_size, self.pad_id,
                            cfg.length_bucket, self.mesh, desc=f"valid_small @ {step}", progress=self.progress)
        m = valid_metrics(self.valid, scores)
        es.record(step, m["valid_auc"])
        if stop_reason is None and es.bad_evals >= cfg.patience:
            stop_reason = "patience"
        meta = {
            "step": step, "data_position": self.order.position(step), "early_stopping": dataclasses.asdict(es),
            "best_step": es.best_step, "finished": stop_reason in FINISHED, "stop_reason": stop_reason,
            "config": self.config,
        }
        self.ckpt.save(step, *state.checkpoint(), meta, m["valid_auc"])
        self.log.write("eval", step=step, **m, best_auc=es.best_auc, best_step=es.best_step, bad_evals=es.bad_evals,
                       train_loss=loss_avg, samples_per_s=rate, lr=float(self.schedule(step)))
        return stop_reason


@dataclasses.dataclass
class WallBudget:
    """cfg.max_wall_minutes from the start of train(); process 0's clock decides, so every process stops at
    the same step."""

    minutes: float | None
    t_start: float

    def spent(self) -> bool:
        return self.minutes is not None and M.agree(time.time() - self.t_start > 60 * self.minutes)


class LossWindow:
    """The training losses and rows since the last evaluation (the logged mean loss and throughput)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.losses: list[jax.Array] = []
        self.rows, self.t0 = 0, time.time()

    def add(self, loss: jax.Array, rows: int) -> None:
        self.losses.append(loss)
        self.rows += rows

    def rate(self) -> float:
        return self.rows / max(time.time() - self.t0, 1e-9)

    def mean_loss(self) -> float:
        return float(np.mean(jax.device_get(self.losses)))


class ProgressBar:
    """tqdm over steps: loss, learning rate, throughput and the last valid AUC."""

    def __init__(self, cfg: TrainConfig, step: int, schedule: Callable, enabled: bool):
        self.schedule = schedule
        self.bar = tqdm(total=cfg.max_steps, initial=step, desc="CoRA", unit="step", disable=not enabled)

    def show(self, step: int, loss: float, rate: float, valid_auc: float | None) -> None:
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{float(self.schedule(step)):.2e}", sps=f"{rate:.1f}",
                             valid_auc="-" if valid_auc is None else f"{valid_auc:.4f}")

    def advance(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
