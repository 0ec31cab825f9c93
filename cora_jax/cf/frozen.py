"""Checkpoint I/O for CF models and the frozen encoder CoRA consumes: a CF run directory is all CoRA needs
to get user and item embeddings, without the CF training code.

A CF run directory holds:
    config.json     {"model": CFModelSpec fields, "train": CFTrainConfig fields, "data": ...}
    checkpoint/     Orbax checkpoint of the model state (parameters + LightGCN's graph arrays)
    results.json    metrics of the best-valid model
`load_cf(dir)` rebuilds the model from config.json + checkpoint without any training code.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from cora_jax.cf.models import CFBatch, CFConfigError, CFModel, CFModelSpec, build_model

if TYPE_CHECKING:
    from cora_jax.data import Split

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoint"
EVAL_CHUNK = 4096  # rows per jitted evaluation call (the last chunk is padded, so one compile per split shape)


def split_batch(split: "Split", seq_len: int) -> CFBatch:
    """Numpy CFBatch of a whole split; `hist` = last seq_len history items (left padded) or [n, 0]."""
    hist = split.recent_history(seq_len) if seq_len > 0 else np.zeros((len(split), 0), np.int32)
    return CFBatch(uid=np.asarray(split.uid, np.int32), iid=np.asarray(split.iid, np.int32), hist=np.asarray(hist, np.int32))


def check_ids(spec: CFModelSpec, split: "Split") -> None:
    """Refuse ids outside the id space the model was trained on (they would silently gather garbage)."""
    if len(split) == 0:
        raise CFConfigError(f"split {split.name!r} is empty")
    for field, limit, values in (("uid", spec.user_num, split.uid), ("iid", spec.item_num, split.iid)):
        top = int(np.max(values))
        if top >= limit or int(np.min(values)) < 0:
            raise CFConfigError(
                f"split {split.name!r} field {field}: id {top} is outside the CF model's range [0, {limit}); "
                "the dataset does not match the one the model was trained on"
            )


def chunked(fn, batch: CFBatch, chunk: int = EVAL_CHUNK):
    """Apply a jitted fn(batch) -> pytree of [b, ...] arrays over a numpy batch, chunk rows at a time."""
    n = len(batch.uid)
    size = min(chunk, n)
    outs = []
    for start in range(0, n, size):
        idx = np.arange(start, start + size)
        valid = idx < n
        idx = np.where(valid, idx, 0)  # pad the last chunk with row 0 to keep one shape
        part = jax.tree.map(lambda a: a[idx], batch)
        out = jax.device_get(fn(part))
        outs.append(jax.tree.map(lambda a: np.asarray(a)[valid], out))
    return jax.tree.map(lambda *parts: np.concatenate(parts, axis=0), *outs)


def state_fns(graphdef):
    """Jitted eval-mode encode and score over (states, batch); states = the tuple nnx.split returned."""

    @jax.jit
    def encode(states, batch: CFBatch):
        model = nnx.merge(graphdef, *states)
        return model.user_repr(batch), model.item_repr(batch)

    @jax.jit
    def score(states, batch: CFBatch):
        return nnx.merge(graphdef, *states).score(batch)

    return encode, score


def save_cf(model: CFModel, spec: CFModelSpec, out_dir: pathlib.Path, extra: dict | None = None) -> None:
    """Write config.json and the Orbax checkpoint of `model` into out_dir (overwriting)."""
    out_dir = pathlib.Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(out_dir / CHECKPOINT_DIR, nnx.to_pure_dict(nnx.state(model)), force=True)
    ckptr.wait_until_finished()
    config = {"model": dataclasses.asdict(spec), **(extra or {})}
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


class FrozenCF:
    """A trained CF model in evaluation mode; the encoder CoRA uses (never trained further)."""

    def __init__(self, model: CFModel, spec: CFModelSpec):
        self.model = model
        self.spec = spec
        self._graphdef, *self._states = nnx.split(model)
        self._encode, self._score = state_fns(self._graphdef)

    kind = property(lambda self: self.spec.kind)
    dim = property(lambda self: self.spec.dim)
    user_num = property(lambda self: self.spec.user_num)
    item_num = property(lambda self: self.spec.item_num)
    seq_len = property(lambda self: self.spec.seq_len)

    def encode_batch(self, batch: CFBatch) -> tuple[np.ndarray, np.ndarray]:
        """(e_u, e_i) float32 [n, dim] each for a numpy CFBatch."""
        e_u, e_i = chunked(lambda b: self._encode(self._states, b), batch)
        return e_u.astype(np.float32), e_i.astype(np.float32)

    def encode(self, split: "Split") -> tuple[np.ndarray, np.ndarray]:
        """(e_u, e_i) float32 [n, dim] each: user and item representations of every row, eval mode."""
        check_ids(self.spec, split)
        return self.encode_batch(split_batch(split, self.seq_len))

    def scores(self, split: "Split") -> np.ndarray:
        """float32 [n]: the CF model's own logit for every row."""
        check_ids(self.spec, split)
        return chunked(lambda b: self._score(self._states, b), split_batch(split, self.seq_len)).astype(np.float32)


def load_cf(path) -> FrozenCF:
    """Rebuild the model saved in a CF run directory (config.json + checkpoint/)."""
    path = pathlib.Path(path).absolute()
    config_path = path / CONFIG_FILE
    if not config_path.is_file() or not (path / CHECKPOINT_DIR).is_dir():
        raise FileNotFoundError(f"{path} is not a CF run directory (needs {CONFIG_FILE} and {CHECKPOINT_DIR}/)")
    spec_fields = json.loads(config_path.read_text())["model"]
    known = {f.name for f in dataclasses.fields(CFModelSpec)}
    unknown = set(spec_fields) - known
    if unknown:
        raise CFConfigError(f"{config_path}: unknown model field(s) {sorted(unknown)}: written by another version; "
                            "retrain the CF model with this one")
    spec = CFModelSpec(**spec_fields)
    abstract = nnx.eval_shape(lambda: build_model(spec))
    graphdef, state = nnx.split(abstract)
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), nnx.to_pure_dict(state))
    restored = ocp.StandardCheckpointer().restore(path / CHECKPOINT_DIR, target)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, restored))
    return FrozenCF(nnx.merge(graphdef, state), spec)
