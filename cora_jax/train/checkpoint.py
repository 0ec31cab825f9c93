"""Orbax checkpoints of a training run: one CheckpointManager, each step a Composite of three items,
keeping the latest and the best (by valid AUC) step:

    params     StandardSave: the trainable parameters (all that scoring and a frozen-LoRA load read)
    opt_state  StandardSave: what only resuming needs (optimiser-state leaves, RNG key data)
    meta       JsonSave: step, data-order position, early-stopping counters, the run's config
    (metrics   written by Orbax: valid AUC and step, so that a reopened manager still prunes by them)

Runs written before the split hold one item `state` ({"params", "opt", "rng"}); they are still
read: scoring restores only its "params", resuming all of it.

The config stored in meta is compared with the requested one *before* any array is restored, so a
checkpoint written by another configuration is refused with a list of the differing fields, never
partially loaded. A checkpoint whose files are missing, truncated or corrupt raises
CheckpointReadError (one line: the step, the file, why); its data files are checked against the
OCDBT index before Orbax reads them (checkpoint_damage.py), so the usual damage is reported without
Orbax's noise (which orbax_noise.py quiets when Orbax fails all the same).
"""
from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any, Callable, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

from cora_jax.errors import CoraError
from cora_jax.train import checkpoint_damage
from cora_jax.train.orbax_noise import quiet_orphaned_reads

METRIC = "valid_auc"
PARAMS, OPT_STATE, META = "params", "opt_state", "meta"
LEGACY_STATE = "state"  # the one array item of runs written before params and optimiser state were split
SET_ASIDE = "unreadable-checkpoints"  # run_dir/SET_ASIDE/<step>: unreadable checkpoints a resume skipped
# free space a save needs beyond its arrays' bytes: Orbax's metadata, and filesystem blocks
SPACE_FACTOR, SPACE_MARGIN = 1.05, 16 << 20
T = TypeVar("T")


class ConfigMismatchError(CoraError, ValueError):
    """The run directory holds checkpoints of a different configuration."""


class CheckpointReadError(CoraError, OSError):
    """A checkpoint with a missing, truncated or corrupt file."""

    def __init__(self, step: int, file: str, why: str):
        self.step, self.file, self.why = step, file, why
        super().__init__(f"checkpoint step {step} is unreadable ({file}: {why})")


class NoIntactCheckpointError(CoraError, OSError):
    """Every checkpoint of a run is unreadable."""


class DiskSpaceError(CoraError, OSError):
    """The checkpoint folder's disk cannot hold the next checkpoint."""


def free_space(path: pathlib.Path) -> int:
    """Bytes free on the disk holding path."""
    return shutil.disk_usage(path).free


def _rank(metrics: dict) -> tuple[float, int]:
    # Ties rank the earlier step higher: early stopping only moves "best" on a strict improvement.
    return metrics[METRIC], -metrics["step"]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_diff(saved: dict, requested: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """Human-readable lines 'field: saved -> requested' for every differing leaf field."""
    a, b = _flatten(saved), _flatten(requested)
    lines = []
    for key in sorted(set(a) | set(b)):
        if any(key == i or key.startswith(i + ".") for i in ignore):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            lines.append(f"{key}: {a.get(key, '<absent>')!r} (checkpoint) vs {b.get(key, '<absent>')!r} (requested)")
    return lines


class NoCheckpointError(CoraError, ValueError):
    """A run asked for its trained parameters before it saved any."""


def trained_best_step(run_dir: str | pathlib.Path, name: str | None = None) -> int:
    """The best step of a run's checkpoints, read without writing anything; `name` says the run in the error."""
    ckpt = RunCheckpoints(run_dir, async_save=False, writable=False)
    try:
        best = ckpt.best_step()
    finally:
        ckpt.close()
    if best is None:
        raise NoCheckpointError(f"{name or run_dir} has no checkpoint yet (train it first)")
    return best


class RunCheckpoints:
    """Latest + best checkpoints under run_dir/checkpoints (step-numbered subfolders).
    writable=False only reads: it neither creates the folder nor clears a killed save's leftovers."""

    def __init__(self, run_dir: str | pathlib.Path, *, async_save: bool = True, writable: bool = True):
        self.directory = pathlib.Path(run_dir).absolute() / "checkpoints"
        policy = AnyPreservationPolicy([LatestN(n=1), BestN(get_metric_fn=_rank, reverse=False, n=1)])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=async_save, create=writable,
            cleanup_tmp_directories=writable,
            # best_fn makes Orbax write each step's metrics: without them a manager reopened by a resume
            # sees steps without metrics, which BestN keeps forever (steps 1 and 4 both kept, ...).
            best_fn=_rank,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        """All steps, newest first."""
        return sorted(self.manager.all_steps(), reverse=True)

    def best_step(self) -> int | None:
        """The best step as recorded by the training loop in the latest meta."""
        latest = self.latest_step()
        return None if latest is None else self.read_meta(latest).get("best_step")

    def save(self, step: int, params: Any, opt_state: Any, meta: dict, valid_auc: float) -> None:
        """Queue an (async) save of step; preservation keeps only the latest and the best. Raises
        DiskSpaceError, before writing anything, when the disk cannot hold it."""
        self.manager.wait_until_finished()  # the previous save's bytes are on disk and its pruning done
        need = int(SPACE_FACTOR * sum(x.nbytes for x in jax.tree.leaves((params, opt_state)))) + SPACE_MARGIN
        free = free_space(self.directory)
        fits = free >= need
        if jax.process_count() > 1:  # every process writes its shards: all stop if one cannot
            fits = bool(np.all(multihost_utils.process_allgather(np.bool_(fits))))
        if not fits:
            kept = ", ".join(map(str, sorted(self.manager.all_steps()))) or "none"
            raise DiskSpaceError(
                f"not enough disk space to save checkpoint step {step} in {self.directory}: it needs about "
                f"{need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free; the checkpoints written so far (steps {kept}) "
                "are intact: free some space and rerun the same command to resume"
            )
        args = ocp.args.Composite(**{PARAMS: ocp.args.StandardSave(params), OPT_STATE: ocp.args.StandardSave(opt_state),
                                     META: ocp.args.JsonSave(meta)})
        self.manager.save(step, args=args, metrics={METRIC: float(valid_auc), "step": int(step)})

    def read_meta(self, step: int) -> dict:
        return self._read(step, (META,), lambda: self.manager.restore(
            step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META])

    def verify(self, step: int) -> None:
        """Raise CheckpointReadError when a data file of step is missing or shorter than its index says."""
        self._read(step, self._array_items(step), lambda: None)

    def newest_intact(self, read: Callable[[int], T], below: int | None = None,
                      skipped: list[CheckpointReadError] = ()) -> tuple[int, T, list[CheckpointReadError]]:
        """(step, read(step), the errors of the newer steps skipped, after `skipped`) for the newest
        step (<= below) that read() does not find unreadable; NoIntactCheckpointError when there is none."""
        skipped = list(skipped)
        for step in self.steps():
            if below is not None and step > below:
                continue
            try:
                return step, read(step), skipped
            except CheckpointReadError as err:
                skipped.append(err)
        raise NoIntactCheckpointError(
            f"no checkpoint of {self.directory.parent} can be read ({'; '.join(map(str, skipped)) or 'there are none'}): "
            f"start over with a new --out folder, or move {self.directory} away and rerun the same command"
        )

    def set_aside(self, steps: list[int]) -> list[pathlib.Path]:
        """Move the step folders out of the manager's sight (a resume from an older step rewrites those
        steps) into run_dir/SET_ASIDE, kept for inspection; returns where they went. Process 0 moves."""
        aside = self.directory.parent / SET_ASIDE
        dests = []
        for step in steps:
            dest, n = aside / str(step), 1
            while dest.exists():
                dest, n = aside / f"{step}.{n}", n + 1
            dests.append(dest)
            if jax.process_index() == 0:
                aside.mkdir(exist_ok=True)
                (self.directory / str(step)).rename(dest)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("cora: unreadable checkpoints set aside")
        return dests

    def check_config(self, step: int, config: dict, ignore: tuple[str, ...] = (),
                     normalize: Callable[[dict], dict] = lambda d: d) -> dict:
        """Meta of step, after checking its stored config equals `config` (except `ignore` fields).
        normalize: applied to the stored config first (fills the defaults of fields added since it was written)."""
        meta = self.read_meta(step)
        diff = config_diff(normalize(meta.get("config", {})), config, ignore)
        if diff:
            raise ConfigMismatchError(
                f"refusing to resume a run of another configuration ({self.directory}/{step}: {'; '.join(diff)}): "
                "use a new --out folder, or rerun with the checkpoint's settings"
            )
        return meta

    def restore(self, step: int, params: Any, opt_state: Any) -> tuple[Any, Any, dict]:
        """(params, opt_state, meta) of step, for resuming; `params` / `opt_state` are pytrees of the
        saved structure. Their jax.Array / ShapeDtypeStruct leaves give the target shardings (each
        array is read straight into its shards, whatever mesh saved it); other leaves (numpy) give
        only shape and dtype."""
        if self._legacy(step):
            out = self._read(step, (LEGACY_STATE, META), lambda: self.manager.restore(step, args=ocp.args.Composite(**{
                LEGACY_STATE: _legacy_restore({"params": params, **opt_state}), META: ocp.args.JsonRestore()})))
            state = out[LEGACY_STATE]
            return state.pop("params"), state, out[META]
        out = self._read(step, (PARAMS, OPT_STATE, META), lambda: self.manager.restore(step, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardRestore(_abstract_tree(params)),
            OPT_STATE: ocp.args.StandardRestore(_abstract_tree(opt_state)), META: ocp.args.JsonRestore()})))
        return out[PARAMS], out[OPT_STATE], out[META]

    def restore_params(self, step: int, params: Any) -> Any:
        """The trainable parameters of step alone (the optimiser state is not read); `params` as in restore."""
        if self._legacy(step):
            return self._read(step, (LEGACY_STATE,), lambda: self.manager.restore(step, args=ocp.args.Composite(**{
                LEGACY_STATE: _legacy_restore({"params": params}, partial=True)}))[LEGACY_STATE]["params"])
        return self._read(step, (PARAMS,), lambda: self.manager.restore(
            step, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(_abstract_tree(params))}))[PARAMS])

    def _legacy(self, step: int) -> bool:
        return (self.directory / str(step) / LEGACY_STATE).is_dir()

    def _array_items(self, step: int) -> tuple[str, ...]:
        return (LEGACY_STATE,) if self._legacy(step) else (PARAMS, OPT_STATE)

    def _read(self, step: int, items: tuple[str, ...], read: Callable[[], T]) -> T:
        """read() of `items` of step, their data files checked first; an unreadable file raises
        CheckpointReadError naming it (other errors, e.g. a template of another structure, pass)."""
        step_dir = self.directory / str(step)
        quiet_orphaned_reads(self.directory)  # before reading: the noise of a failed read starts as soon as it fails
        try:
            for item in items:
                damage = checkpoint_damage.damaged_file(step_dir / item)
                if damage:
                    raise CheckpointReadError(step, *damage)
            return read()
        except CheckpointReadError:
            raise
        except Exception as err:
            if not checkpoint_damage.unreadable(err):
                raise
            raise CheckpointReadError(step, *checkpoint_damage.describe(err, step_dir, items)) from None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _abstract(a: Any) -> jax.ShapeDtypeStruct:
    if isinstance(a, jax.ShapeDtypeStruct):
        return a
    return jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=a.sharding if isinstance(a, jax.Array) else None)


def _abstract_tree(tree: Any) -> Any:
    return jax.tree.map(_abstract, tree)


def _legacy_restore(template: Any, partial: bool = False) -> ocp.args.PyTreeRestore:
    """Restore args of the `state` item for a template of (with partial, part of) its tree: PyTree
    args, which unlike Standard ones can leave the optimiser leaves unread."""
    abstract = _abstract_tree(template)
    return ocp.args.PyTreeRestore(abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                  partial_restore=partial)


def write_json(path: pathlib.Path, obj: Any) -> None:
    """Write JSON atomically (tmp + rename), so a kill never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)
