"""Columnar in-memory splits and datasets (`Split`, `Dataset`), their summary, and `DataError`."""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from cora_jax.errors import CoraError

SPLIT_NAMES = ("train", "valid", "valid_small", "test")
FLAG_OF = {"train": -1, "valid": 0, "valid_small": 0, "test": 1}


class DataError(CoraError, ValueError):
    """Bad input data; the message starts with `file:line: field:` where they are known."""

    def __init__(self, file: str | pathlib.Path | None, line: int | None, field: str | None, msg: str):
        where = str(file) if file is not None else "<data>"
        if line is not None:
            where += f":{line}"
        if field is not None:
            where += f": field {field!r}"
        super().__init__(f"{where}: {msg}")
        self.file, self.line, self.field = file, line, field


def gather_ranges(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate values[starts[j] : starts[j] + lengths[j]] over j, without a Python loop."""
    lengths = lengths.astype(np.int64)
    total = int(lengths.sum())
    if total == 0:
        return values[:0]
    seg_start = np.cumsum(lengths) - lengths  # where segment j begins in the output
    within = np.arange(total, dtype=np.int64) - np.repeat(seg_start, lengths)
    return values[np.repeat(starts.astype(np.int64), lengths) + within]


def offsets_from_lengths(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


@dataclasses.dataclass(frozen=True)
class Split:
    """One split, columnar; n rows. Histories are ragged: his_values[his_offsets[j]:his_offsets[j+1]]."""

    name: str  # "train" | "valid" | "valid_small" | "test" (or "test_warm"/"test_cold" for views)
    row: np.ndarray  # int64 [n]  row number in the (uid, timestamp)-sorted concatenation
    uid: np.ndarray  # int32 [n]
    iid: np.ndarray  # int32 [n]
    label: np.ndarray  # int32 [n]  0/1
    timestamp: np.ndarray  # int64 [n]
    flag: np.ndarray  # int32 [n]  -1 train, 0 valid, 1 test
    not_cold: np.ndarray  # int32 [n]  1 when the user and the item both occur in train
    his_values: np.ndarray  # int32 [sum of lengths] all histories concatenated (each starts with 0)
    his_offsets: np.ndarray  # int64 [n+1]

    def __len__(self) -> int:
        return len(self.row)

    def history(self, i: int) -> np.ndarray:
        """Item ids of row i's history, including the leading padding 0."""
        return self.his_values[self.his_offsets[i] : self.his_offsets[i + 1]]

    def history_lengths(self) -> np.ndarray:
        """int64 [n]: history lengths, padding 0 excluded."""
        return np.diff(self.his_offsets) - 1

    def recent_history(self, max_len: int) -> np.ndarray:
        """int32 [n, max_len]: the last max_len history ids of each row (padding 0 excluded), left-padded with 0."""
        n = len(self)
        keep = np.minimum(self.history_lengths(), max_len)
        out = np.zeros((n, max_len), dtype=np.int32)
        rows = np.repeat(np.arange(n), keep)
        seg_start = np.cumsum(keep) - keep
        within = np.arange(int(keep.sum())) - np.repeat(seg_start, keep)
        cols = np.repeat(max_len - keep, keep) + within
        src = np.repeat(self.his_offsets[1:] - keep, keep) + within
        out[rows, cols] = self.his_values[src]
        return out

    def take(self, idx: np.ndarray, name: str | None = None) -> "Split":
        """The rows idx (any order, repeats allowed) as a new split."""
        idx = np.asarray(idx, dtype=np.int64)
        lengths = np.diff(self.his_offsets)[idx]
        return Split(
            name=self.name if name is None else name,
            row=self.row[idx], uid=self.uid[idx], iid=self.iid[idx], label=self.label[idx],
            timestamp=self.timestamp[idx], flag=self.flag[idx], not_cold=self.not_cold[idx],
            his_values=gather_ranges(self.his_values, self.his_offsets[:-1][idx], lengths),
            his_offsets=offsets_from_lengths(lengths),
        )

    def warm(self) -> "Split":
        return self.take(np.flatnonzero(self.not_cold == 1), f"{self.name}_warm")

    def cold(self) -> "Split":
        return self.take(np.flatnonzero(self.not_cold == 0), f"{self.name}_cold")


@dataclasses.dataclass(frozen=True)
class Dataset:
    root: pathlib.Path | None  # folder it was loaded from (None when built in memory)
    splits: dict[str, Split]  # "train", "valid", "valid_small", "test"
    user_num: int  # max uid over all splits + 1 (0 = padding)
    item_num: int  # max iid (rows and histories) + 1
    item_titles: np.ndarray  # object (str) [item_num]; "" for padding / unknown
    domain: str  # "movie" | "book" (prompt wording)

    def __getitem__(self, name: str) -> Split:
        if name in self.splits:
            return self.splits[name]
        base, _, view = name.rpartition("_")
        if view in ("warm", "cold") and base in self.splits:
            return getattr(self.splits[base], view)()
        raise KeyError(f"no split {name!r}; have {sorted(self.splits)} and their _warm/_cold views")


def dataset_stats(ds: Dataset) -> dict:
    """Rows, users, items, positive rate and warm/cold counts per split, plus the id space."""
    out: dict = {"user_num": ds.user_num, "item_num": ds.item_num, "domain": ds.domain, "splits": {}}
    for name in SPLIT_NAMES:
        s = ds.splits[name]
        out["splits"][name] = {
            "rows": len(s), "users": int(len(np.unique(s.uid))), "items": int(len(np.unique(s.iid))),
            "positive_rate": round(float(s.label.mean()), 4) if len(s) else None,
            "warm": int((s.not_cold == 1).sum()), "cold": int((s.not_cold == 0).sum()),
            "first_day": str(np.datetime64(int(s.timestamp.min()), "s").astype("datetime64[D]")),
            "last_day": str(np.datetime64(int(s.timestamp.max()), "s").astype("datetime64[D]")),
        }
    return out
