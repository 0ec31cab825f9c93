"""Opt-in conversion of CoLLM's pandas pickles into the JSON Lines layout.

Unpickling runs code chosen by whoever wrote the file, so this is never called by the normal path:
only the `convert-pickle` subcommand with an explicit trust flag reaches it. Needs pandas (not a
dependency of cora_jax): `pip install pandas`.
"""
from __future__ import annotations

import gzip
import json
import pathlib
import tempfile

import numpy as np

from cora_jax.data.load import load_dataset
from cora_jax.data.split import FLAG_OF, SPLIT_NAMES

# columns read from each DataFrame (row = its index when there is no `row` column)
_COLUMNS = ("uid", "iid", "label", "timestamp", "his", "his_title", "title")


def _records(df, name: str, path) -> list[dict]:
    missing = [c for c in _COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: the DataFrame lacks column(s) {missing}; has {list(df.columns)}")
    rows = df["row"].tolist() if "row" in df.columns else [int(i) for i in df.index]
    out = []
    for row, rec in zip(rows, df[list(_COLUMNS) + [c for c in ("flag", "not_cold") if c in df.columns]]
                        .to_dict("records")):
        rec = {k: (v.tolist() if isinstance(v, np.ndarray) else v.item() if isinstance(v, np.generic) else v)
               for k, v in rec.items()}
        out.append({"row": int(row), "uid": int(rec["uid"]), "iid": int(rec["iid"]), "label": int(rec["label"]),
                    "timestamp": int(rec["timestamp"]), "his": [int(h) for h in rec["his"]],
                    "his_title": [str(t) for t in rec["his_title"]], "title": str(rec["title"]),
                    "flag": float(FLAG_OF[name]), "not_cold": int(rec.get("not_cold", -1))})
    return out


def convert_collm_pickles(paths: dict[str, pathlib.Path | None], out: pathlib.Path) -> pathlib.Path:
    """paths: split name -> pickle (valid_small may be None: sampled like the reference). Validated after."""
    try:
        import pandas as pd
    except ImportError:
        raise SystemExit("convert-pickle needs pandas, which cora_jax does not install: pip install pandas") from None
    frames = {name: pd.read_pickle(p) for name, p in paths.items() if p is not None}
    if "valid_small" not in frames:
        frames["valid_small"] = frames["valid"].sample(frac=0.5, random_state=2023)
    recs = {name: _records(frames[name], name, paths.get(name)) for name in SPLIT_NAMES}
    if any(r["not_cold"] == -1 for rs in recs.values() for r in rs):
        train_users = {r["uid"] for r in recs["train"]}
        train_items = {r["iid"] for r in recs["train"]}
        for rs in recs.values():
            for r in rs:
                r["not_cold"] = int(r["uid"] in train_users and r["iid"] in train_items)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        for name in SPLIT_NAMES:
            with gzip.open(pathlib.Path(tmp) / f"{name}.jsonl.gz", "wt", encoding="utf-8") as fh:
                for r in recs[name]:
                    fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        load_dataset(tmp)  # validate before anything lands in `out`
        for name in SPLIT_NAMES:
            (pathlib.Path(tmp) / f"{name}.jsonl.gz").replace(out / f"{name}.jsonl.gz")
    return out
