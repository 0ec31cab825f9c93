"""The files runs leave for reports: JSON lines (a training run's metrics.jsonl, an evaluation's per-row
scores.jsonl, gzipped as committed under results/), read with errors that name the file and line."""
from __future__ import annotations

import gzip
import json
import pathlib
from typing import Any, Iterator

import numpy as np

from cora_jax.errors import CoraError

SCORES = "scores.jsonl"  # per-row scores beside an evaluation's results.json
SCORE_FIELDS = ("model", "split", "uid", "iid", "label", "score")


class ReportError(CoraError, ValueError):
    """A results, scores or metrics file that cannot be read as the report needs it."""


def json_lines(path: str | pathlib.Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSON-lines file, plain or gzip (by its .gz suffix)."""
    path = str(path)
    try:
        with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot read ({e})") from e
    for k, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield k, json.loads(line)
            except ValueError as e:
                raise ReportError(f"{path}:{k}: not JSON ({e})") from e


def score_records(model: str, split_name: str, split, scores: np.ndarray) -> list[dict]:
    """One record per row of `split` (uid, iid, label arrays) with its score, as scores.jsonl holds them."""
    return [{"model": model, "split": split_name, "uid": int(u), "iid": int(i), "label": int(y), "score": float(s)}
            for u, i, y, s in zip(split.uid, split.iid, split.label, scores)]


def write_scores(path: pathlib.Path, records: list[dict]) -> None:
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def read_scores(path: str | pathlib.Path) -> list[dict]:
    """The records of a scores.jsonl(.gz), each checked to carry every field."""
    rows = []
    for k, row in json_lines(path):
        if not isinstance(row, dict):
            raise ReportError(f"{path}:{k}: not a JSON object")
        if missing := [f for f in SCORE_FIELDS if f not in row]:
            raise ReportError(f"{path}:{k}: no '{missing[0]}' field")
        rows.append(row)
    return rows
