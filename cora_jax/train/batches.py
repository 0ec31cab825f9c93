"""A split's rows as the model reads them: tokenised prompts and CF embeddings prepared once (SplitInputs),
left-padded batches of any rows, and the training order of batches, a function of (seed, step) only."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from cora_jax.batch import Batch
from cora_jax.train.setup import Setup, SetupError


@dataclasses.dataclass
class SplitInputs:
    """One split, tokenised and CF-encoded once."""

    split: object                    # cora_jax.data.Split
    tokens: list[np.ndarray]         # per row: int32 prompt ids (BOS first)
    slots: list[np.ndarray] | None   # per row: int32 slot numbers (0 = text token); None = no slots
    lengths: np.ndarray              # int64 [n]
    e_u: np.ndarray | None           # float32 [n, cf_dim] (None: no CF, zero-shot)
    e_i: np.ndarray | None           # float32 [n, cf_dim]
    labels: np.ndarray               # float32 [n]

    def __len__(self) -> int:
        return len(self.tokens)


def prepare_split(setup: Setup, split) -> SplitInputs:
    from cora_jax.data import ITEM_SLOT, USER_SLOT, split_prompts

    prompts = split_prompts(setup.dataset, split, setup.prompt_cfg, setup.features)
    slots = None
    if setup.slot_tokens:
        ids, slot_ids = setup.tokenizer.encode_with_slots(prompts, (USER_SLOT, ITEM_SLOT), setup.slot_tokens)
        slots = [np.asarray(s, np.int32) for s in slot_ids]
    else:
        ids = setup.tokenizer.encode_many(prompts)
    tokens = [np.asarray(t, np.int32) for t in ids]
    e_u = e_i = None
    if setup.cf is not None:
        e_u, e_i = setup.cf.encode(split)
    return SplitInputs(split, tokens, slots, np.array([len(t) for t in tokens]), e_u, e_i,
                       np.asarray(split.label, np.float32))


def make_batch(inputs: SplitInputs, idx: np.ndarray, pad_id: int, multiple: int) -> Batch:
    """Left-padded numpy batch of rows idx: ids/mask [B, T] (T rounded up to `multiple`), uid/iid,
    label, and slot [B, T] / e_u, e_i when the inputs have them."""
    T = int(math.ceil(max(inputs.lengths[idx]) / multiple) * multiple)
    ids = np.full((len(idx), T), pad_id, np.int32)
    mask = np.zeros((len(idx), T), np.int32)
    slot = np.zeros((len(idx), T), np.int32)
    for r, i in enumerate(idx):
        t = inputs.tokens[i]
        ids[r, T - len(t):] = t
        mask[r, T - len(t):] = 1
        if inputs.slots is not None:
            slot[r, T - len(t):] = inputs.slots[i]
    cf = inputs.e_u is not None
    return Batch(ids, mask, label=inputs.labels[idx], uid=np.asarray(inputs.split.uid[idx], np.int32),
                 iid=np.asarray(inputs.split.iid[idx], np.int32), slot=slot if inputs.slots is not None else None,
                 e_u=inputs.e_u[idx] if cf else None, e_i=inputs.e_i[idx] if cf else None)


class TrainOrder:
    """Deterministic batch composition: step s (1-based) -> row indices, from (seed, pass) only."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, bucket: bool):
        if len(lengths) < batch_size:
            raise SetupError(f"the train split has {len(lengths)} rows, fewer than one batch of {batch_size}")
        self.lengths, self.batch_size, self.seed, self.bucket = lengths, batch_size, seed, bucket
        self.per_pass = len(lengths) // batch_size
        self._cache: dict[int, list[np.ndarray]] = {}

    def _pass(self, p: int) -> list[np.ndarray]:
        if p not in self._cache:
            rng = np.random.default_rng([self.seed, p])
            rows = rng.permutation(len(self.lengths))[: self.per_pass * self.batch_size]  # drop a random remainder
            if self.bucket:  # sort the kept rows by length (random tie order), cut, shuffle the batches
                rows = rows[np.argsort(self.lengths[rows], kind="stable")]
                batches = rows.reshape(self.per_pass, self.batch_size)
                batches = batches[rng.permutation(self.per_pass)]
            else:
                batches = rows.reshape(self.per_pass, self.batch_size)
            self._cache = {p: list(batches)}  # only the current pass is kept
        return self._cache[p]

    def indices(self, step: int) -> np.ndarray:
        p, k = divmod(step - 1, self.per_pass)
        return self._pass(p)[k]

    def position(self, step: int) -> dict:
        p, k = divmod(step, self.per_pass)
        return {"pass": p, "batch_in_pass": k, "samples_seen": step * self.batch_size}
