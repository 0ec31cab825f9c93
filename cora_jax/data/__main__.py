"""`python -m cora_jax.data {build,stats,prompt,convert-pickle} ...` (tyro subcommands)."""
from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
from typing import Literal

import tyro

from cora_jax.data.build import Source, build_to, default_windows
from cora_jax.data.load import load_dataset
from cora_jax.data.prompts import PromptConfig, render_prompt
from cora_jax.data.recipe import MonthWindows
from cora_jax.data.split import dataset_stats
from cora_jax.errors import UsageError, entry_point

Positional = tyro.conf.Positional


def build(
    source: Source,
    out: pathlib.Path,
    raw: pathlib.Path | None = None,
    train_months: tuple[int, int] | None = None,
    valid_months: tuple[int, int] | None = None,
    test_months: tuple[int, int] | None = None,
    origin: str | None = None,
) -> None:
    """Build a split from raw data (reference recipe) into OUT.

    Args:
        source: raw format: GroupLens ml-1m / ml-100k, RecBole ml-100k atomic files, Amazon 2018 Books.
        out: output folder (train/valid/valid_small/test .jsonl.gz + BUILD.json); replaced atomically.
        raw: folder with the raw files; omitted for ml-100k-recbole = the installed recbole wheel.
        train_months: MovieLens: inclusive month range of train (months since ORIGIN); Amazon: calendar months.
        valid_months: MovieLens only: inclusive month range of valid.
        test_months: MovieLens only: inclusive month range of test.
        origin: MovieLens only: "YYYY-MM" of month 0 (default: the source's; ml-1m: the first rating's month).
    """
    w = default_windows(source)
    if isinstance(w, MonthWindows):
        changes = {k: v for k, v in (("train", train_months), ("valid", valid_months), ("test", test_months),
                                     ("origin", origin)) if v is not None}
        w = dataclasses.replace(w, **changes)
    else:
        if valid_months or test_months or origin:
            raise UsageError("--valid-months/--test-months/--origin are MovieLens only: for amazon-book give only "
                             "--train-months (valid and test halve the held-out month)")
        if train_months is not None:
            w = dataclasses.replace(w, train_months=train_months)
    start = time.perf_counter()
    path, ds = build_to(source, out, raw, w)
    print(json.dumps({"out": str(path), "seconds": round(time.perf_counter() - start, 2), **dataset_stats(ds)}))


def stats(path: Positional[pathlib.Path]) -> None:
    """Print one JSON object with per-split rows, users, items, positive rate and warm/cold counts."""
    print(json.dumps(dataset_stats(load_dataset(path))))


def prompt(path: Positional[pathlib.Path], split: str = "test", index: int = 0,
           domain: Literal["movie", "book"] | None = None) -> None:
    """Print the rendered prompt of one row (split may be test_warm, valid_cold, ...)."""
    ds = load_dataset(path)
    s = ds[split]
    if not 0 <= index < len(s):
        raise UsageError(f"--index {index} is out of range: {split} has {len(s)} rows; give 0 .. {len(s) - 1}")
    his = s.history(index)[1:]
    cfg = PromptConfig(domain=domain or ds.domain)
    print(render_prompt(ds.item_titles[his].tolist(), ds.item_titles[int(s.iid[index])], cfg))


def convert_pickle(
    train: pathlib.Path,
    valid: pathlib.Path,
    test: pathlib.Path,
    out: pathlib.Path,
    valid_small: pathlib.Path | None = None,
    i_trust_these_files: bool = False,
) -> None:
    """Convert CoLLM's pandas pickles into the JSON Lines layout (needs pandas; opt-in).

    WARNING: unpickling can run arbitrary code. Only convert files whose origin you trust, and pass
    --i-trust-these-files to confirm. Without --valid-small it is sampled from valid (frac 0.5, seed 2023).

    Args:
        train: CoLLM train pickle (a DataFrame with uid, iid, label, timestamp, his, his_title, title, ...).
        valid: CoLLM valid pickle.
        test: CoLLM test pickle.
        out: output folder.
        valid_small: CoLLM valid_small pickle, if you have it.
        i_trust_these_files: confirm that you trust the pickles (they can run code when loaded).
    """
    from cora_jax.data.convert import convert_collm_pickles

    print("warning: pickles can run arbitrary code when loaded; convert only files you trust.", file=sys.stderr)
    if not i_trust_these_files:
        raise UsageError("refusing to unpickle (no --i-trust-these-files): pass it only for pickles you trust")
    convert_collm_pickles({"train": train, "valid": valid, "test": test, "valid_small": valid_small}, out)
    print(json.dumps(dataset_stats(load_dataset(out))))


@entry_point
def main(args: list[str]) -> None:
    tyro.extras.subcommand_cli_from_dict(
        {"build": build, "stats": stats, "prompt": prompt, "convert-pickle": convert_pickle},
        prog="python -m cora_jax.data", args=args,
    )


if __name__ == "__main__":
    main()
