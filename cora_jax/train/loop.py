"""CoRA training: the sharded jitted step on a device mesh (cora_jax.train.mesh; one device is a 1x1x1 mesh)
with its hooks (cora_jax.train.hooks: evaluation, early stopping and checkpoints, the wall budget, the log),
and exact resume.

Exact resume: everything a step consumes is a function of (step, seed) or of checkpointed state.
Batch composition comes from `TrainOrder` (a per-pass permutation seeded by (seed, pass)), dropout
keys are `fold_in(key, step)`, and the trainable parameters + optimiser state + early-stopping
counters are restored from the newest intact checkpoint (newer unreadable ones are set aside). A
run killed at any point and restarted with the same config therefore replays the same steps and
ends with the same parameters. The restore lands every array directly in its shards on the
resuming mesh, which may differ from the one that saved.
"""
from __future__ import annotations

import json
import pathlib
import sys
import time

import jax

from cora_jax.train import mesh as M
from cora_jax.train import steps as S
from cora_jax.train.batches import TrainOrder, make_batch, prepare_split
from cora_jax.train.checkpoint import CheckpointReadError, RunCheckpoints, write_json
from cora_jax.train.config import TrainConfig, to_dict
from cora_jax.train.hooks import EvaluateAndCheckpoint, EventLog, LossWindow, ProgressBar, WallBudget
from cora_jax.train.models import build_model, place_model
from cora_jax.train.optim import make_optimizer, make_schedule
from cora_jax.train.scoring import score_rows
from cora_jax.train.setup import CONFIG_FILE, Setup, get_split, load_setup, make_run_mesh
from cora_jax.train.state import (
    EarlyStopping, TrainState, calibrated_offset, intact_meta, set_loss_offset,
)

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def _resume_point(run_dir: pathlib.Path, config: dict) -> tuple[int | None, dict | None, list[CheckpointReadError]]:
    """(step, meta) of the newest checkpoint written by `config` whose files are intact (None, None without
    one), and the unreadable newer ones. Only reads run_dir."""
    previous = RunCheckpoints(run_dir, async_save=False, writable=False)
    try:
        if previous.latest_step() is None:
            return None, None, []
        return previous.newest_intact(lambda s: intact_meta(previous, s, config))
    finally:
        previous.close()


def _finished_summary(run_dir: pathlib.Path, meta: dict) -> dict:
    print(f"{run_dir}: already finished at step {meta['step']} ({meta['stop_reason']}); nothing to do")
    if (run_dir / SUMMARY_FILE).is_file():
        return json.loads((run_dir / SUMMARY_FILE).read_text())
    es = meta["early_stopping"]  # killed after the last checkpoint but before the summary
    return {"run": str(run_dir), "steps": meta["step"], "stop_reason": meta["stop_reason"], "best_step": es["best_step"],
            "best_valid_auc": es["best_auc"], "last_valid_auc": es["last_auc"]}


def _restore(run_dir: pathlib.Path, config: dict, latest: int, skipped: list, state: TrainState, st: S.ShardedState,
             main: bool) -> TrainState:
    """The state of the newest checkpoint that restores (a corrupt array file the size checks missed falls back
    further), on st's shardings; the unreadable newer steps' folders are set aside (kept, for inspection)."""
    reader = RunCheckpoints(run_dir, async_save=False, writable=False)

    def restore(s: int):
        intact_meta(reader, s, config)
        return reader.restore(s, *state.templates())
    try:
        _, (params, resume, meta), skipped = reader.newest_intact(restore, below=latest, skipped=skipped)
    finally:
        reader.close()
    restored = TrainState.from_checkpoint(params, resume, meta, st)
    for err, dest in zip(skipped, reader.set_aside([err.step for err in skipped])):  # those steps are retrained
        if main:
            print(f"{err}; resuming from step {restored.step} (moved to {dest})", file=sys.stderr, flush=True)
    es = restored.early_stopping
    print(f"{run_dir}: resuming from step {restored.step} (best valid AUC {es.best_auc:.4f} at step {es.best_step})")
    return restored


def _calibrate(cfg: TrainConfig, setup: Setup, state: TrainState, st: S.ShardedState, score, mesh, progress: bool):
    """The trainable parameters with the loss offset that makes the base LLM (P = 0) predict the train rows'
    positive rate on average."""
    cal_in = prepare_split(setup, get_split(setup.dataset, "train", cfg.calibrate_rows, sample_seed=cfg.seed))
    base = score_rows(lambda b: score(state.trainable, b), cal_in, cfg.eval_batch_size, setup.tokenizer.pad_id,
                      cfg.length_bucket, mesh, desc="calibrating", progress=progress)
    return set_loss_offset(state.trainable, st, calibrated_offset(base, cal_in.labels))


def train(cfg: TrainConfig, setup: Setup | None = None) -> dict:
    """Train (or resume) the run in cfg.out on the device mesh cfg.mesh; returns the summary (also
    written to summary.json). Multi-host (cfg.mesh.distributed): every process runs this with the
    same config; process 0 writes the run's JSON files, all of them the (sharded) checkpoints."""
    M.init_distributed(cfg.mesh)  # before any other jax use
    t_start = time.time()
    cfg.validate()
    mesh = make_run_mesh(cfg.mesh, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size)
    main = jax.process_index() == 0
    run_dir = pathlib.Path(cfg.out)
    config = to_dict(cfg)
    # run_dir is only read until everything has been checked and loaded: a refused resume, a bad
    # flag or a failed load leave it as it was (or absent).
    latest, meta, skipped = _resume_point(run_dir, config)
    if meta is not None and meta.get("finished"):
        return _finished_summary(run_dir, meta)

    setup = setup or load_setup(cfg, mesh=mesh, fit_codes=True)
    train_in = prepare_split(setup, get_split(setup.dataset, "train", cfg.train_limit))
    valid_in = prepare_split(setup, get_split(setup.dataset, "valid_small", cfg.valid_limit, sample_seed=cfg.seed))
    order = TrainOrder(train_in.lengths, cfg.batch_size, cfg.seed, cfg.bucket_train)
    tx, schedule = make_optimizer(cfg.optim), make_schedule(cfg.optim)
    graphdef, st = place_model(build_model(cfg, setup), tx, mesh)
    state = TrainState(0, st.trainable, st.opt_state, jax.random.key(cfg.seed), EarlyStopping())
    run_dir.mkdir(parents=True, exist_ok=True)
    if meta is not None:
        state = _restore(run_dir, config, latest, skipped, state, st, main)
    ckpt = RunCheckpoints(run_dir, async_save=cfg.async_checkpoint)
    log = EventLog(run_dir / METRICS_FILE, main)
    if main:
        write_json(run_dir / CONFIG_FILE, config)
    log.write("resume" if state.step else "start", step=state.step, mesh=dict(mesh.shape),
              processes=jax.process_count())

    frozen = st.frozen
    train_step = S.make_sharded_train_step(S.loss_fn(graphdef), tx, st, mesh)
    eval_step = S.make_sharded_eval_step(S.eval_fn(graphdef), st, mesh)

    def score(trainable, b):
        return eval_step(trainable, frozen, b)
    pad = setup.tokenizer.pad_id
    progress = cfg.progress and main
    if state.step == 0 and cfg.calibrate_rows:
        state.trainable = _calibrate(cfg, setup, state, st, score, mesh, progress)

    evaluate = EvaluateAndCheckpoint(cfg, config, valid_in, score, order, schedule, ckpt, log, mesh, pad, progress)
    budget = WallBudget(cfg.max_wall_minutes, t_start)
    bar = ProgressBar(cfg, state.step, schedule, progress)
    window = LossWindow()
    stop_reason = None
    while stop_reason is None and state.step < cfg.max_steps:
        state.step += 1
        b = M.shard_batch(make_batch(train_in, order.indices(state.step), pad, cfg.length_bucket), mesh)
        state.trainable, state.opt_state, loss = train_step(state.trainable, state.opt_state, frozen, b,
                                                            jax.random.fold_in(state.key, state.step))
        window.add(loss, cfg.batch_size)
        over_budget = budget.spent()
        if evaluate.due(state.step) or over_budget:
            loss_avg, rate = window.mean_loss(), window.rate()
            reason = "max_steps" if state.step == cfg.max_steps else ("wall_budget" if over_budget else None)
            stop_reason = evaluate(state, reason, loss_avg, rate)
            if stop_reason is None and budget.spent():
                stop_reason = "wall_budget"  # the evaluation itself used up the budget: stop on this checkpoint
            bar.show(state.step, loss_avg, rate, state.early_stopping.last_auc)
            window.reset()  # after the evaluation: the next window's throughput leaves it out
        elif state.step % 10 == 0 or state.step < 10:
            bar.show(state.step, float(loss), window.rate(), state.early_stopping.last_auc)
        bar.advance()
    bar.close()
    ckpt.close()
    if stop_reason == "wall_budget" and state.step < cfg.max_steps:
        print(f"WARNING: the wall-clock safety budget (max_wall_minutes={cfg.max_wall_minutes}) stopped training at step "
              f"{state.step} of {cfg.max_steps}: this machine is slower than the preset assumes, and the results will "
              "differ from a run of every step", file=sys.stderr, flush=True)
    es = state.early_stopping
    summary = {
        "run": str(run_dir), "steps": state.step, "stop_reason": stop_reason, "best_step": es.best_step,
        "best_valid_auc": es.best_auc, "last_valid_auc": es.last_auc, "wall_s_this_process": time.time() - t_start,
        "train_rows": len(train_in), "valid_rows": len(valid_in),
    }
    if main:
        write_json(run_dir / SUMMARY_FILE, summary)
    log.write("end", **summary)
    return summary
