"""Build a split folder from a raw source, the cached embedded ML-100K split, and the folder a --data value names."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from typing import Literal

from cora_jax.assets import cache_dir, ml100k_recbole_dir
from cora_jax.data.raw_readers import read_amazon_book, read_ml1m, read_ml100k, read_ml100k_recbole
from cora_jax.data.recipe import ML1M_WINDOWS, ML100K_WINDOWS, AmazonWindows, MonthWindows, assemble
from cora_jax.data.split import SPLIT_NAMES, Dataset
from cora_jax.data.write import write_dataset
from cora_jax.errors import UsageError

RECIPE_VERSION = 1  # bump when the recipe changes, so cached builds are rebuilt
# GroupLens ML-1M and ML-100K, RecBole's ML-100K atomic files (the embedded default), Amazon 2018 Books
Source = Literal["ml-1m", "ml-100k", "ml-100k-recbole", "amazon-book"]


def default_windows(source: Source) -> MonthWindows | AmazonWindows:
    return {"ml-1m": ML1M_WINDOWS, "ml-100k": ML100K_WINDOWS, "ml-100k-recbole": ML100K_WINDOWS,
            "amazon-book": AmazonWindows()}[source]


def build_dataset(source: Source, raw: str | pathlib.Path | None = None,
                  windows: MonthWindows | AmazonWindows | None = None) -> Dataset:
    """Read a raw source and apply the recipe; `raw=None` only for ml-100k-recbole (the installed wheel)."""
    w = default_windows(source) if windows is None else windows
    if raw is None and source != "ml-100k-recbole":
        raise ValueError(f"--raw is required for source {source!r}")
    raw_path = ml100k_recbole_dir() if raw is None else pathlib.Path(raw)
    readers = {"ml-1m": read_ml1m, "ml-100k": read_ml100k, "ml-100k-recbole": read_ml100k_recbole,
               "amazon-book": read_amazon_book}
    x = readers[source](raw_path, w)
    return assemble(x, valid_small_frac=w.valid_small_frac, seed=w.seed,
                    domain="book" if source == "amazon-book" else "movie")


def build_to(source: Source, out: str | pathlib.Path, raw: str | pathlib.Path | None = None,
             windows: MonthWindows | AmazonWindows | None = None) -> tuple[pathlib.Path, Dataset]:
    """Build and write atomically: into a temporary sibling folder, then renamed to `out`.
    Returns the folder and the dataset built in memory."""
    w = default_windows(source) if windows is None else windows
    ds = build_dataset(source, raw, w)
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_dataset(ds, tmp, {"source": source, "raw": None if raw is None else str(raw),
                                "windows": dataclasses.asdict(w), "recipe_version": RECIPE_VERSION})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out, ds


def _is_current_build(path: pathlib.Path) -> bool:
    meta = path / "BUILD.json"
    if not all((path / f"{n}.jsonl.gz").is_file() for n in SPLIT_NAMES) or not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("recipe_version") == RECIPE_VERSION
    except (json.JSONDecodeError, OSError):
        return False


def ensure_ml100k() -> pathlib.Path:
    """The embedded ML-100K split (from the recbole wheel), built once into cache_dir()/"ml-100k".

    Override the cache folder with $CORA_JAX_CACHE. Rebuilt when missing or built by an older recipe.
    """
    out = cache_dir() / "ml-100k"
    if not _is_current_build(out):
        build_to("ml-100k-recbole", out)
    return out


def resolve_data_arg(data: str | pathlib.Path) -> pathlib.Path:
    """The split folder a --data value names: "ml100k" is the embedded ML-100K split (built on first use)."""
    if str(data) == "ml100k":
        return ensure_ml100k()
    path = pathlib.Path(data)
    if not path.is_dir():
        raise UsageError(f"no such folder (--data {data}): give a split folder "
                         f"({{train,valid,valid_small,test}}.jsonl.gz) or 'ml100k'")
    return path
