"""Command line for the CF backbones: `python -m cora_jax.cf train|grid ...` (train.py cf delegates here)."""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Annotated

import tyro

from cora_jax.cf.trainer import REFERENCE_LRS, REFERENCE_WDS, CFTrainConfig, grid_cf, train_cf
from cora_jax.errors import entry_point


@dataclasses.dataclass(frozen=True)
class CFTrainCommand:
    """Train one CF backbone, save the best-valid model and print its metrics as one JSON line."""

    data: str  # split folder ({train,valid,test}.jsonl.gz) or "ml100k" for the embedded ML-100K split
    out: pathlib.Path  # run directory: checkpoint/, config.json, results.json, epochs.jsonl
    cfg: Annotated[CFTrainConfig, tyro.conf.OmitArgPrefixes] = CFTrainConfig()  # hyper-parameters (flat flags)


@dataclasses.dataclass(frozen=True)
class CFGridCommand:
    """Train every lr x wd pair, pick by valid AUC, write grid.json and grid.md into out."""

    data: str  # split folder or "ml100k"
    out: pathlib.Path  # grid directory; each run goes to out/lr{lr}_wd{wd}
    lrs: tuple[float, ...] = REFERENCE_LRS  # learning rates tried
    wds: tuple[float, ...] = REFERENCE_WDS  # weight decays tried
    cfg: Annotated[CFTrainConfig, tyro.conf.OmitArgPrefixes] = CFTrainConfig()  # other hyper-parameters (flat flags)


def run_cf(cmd: CFTrainCommand | CFGridCommand) -> dict:
    """Run a parsed command; print its summary as the final single JSON line and return it."""
    if isinstance(cmd, CFGridCommand):
        summary = grid_cf(cmd.cfg, cmd.data, cmd.out, cmd.lrs, cmd.wds)
        result = {"grid": str(cmd.out), "best": summary["best"]}
    else:
        result = train_cf(cmd.cfg, cmd.data, cmd.out)
    print(json.dumps(result), flush=True)
    return result


@entry_point
def main_cf(argv: list[str]) -> dict:
    """`train ...` or `grid ...` (a bare flag list means `train`); argv defaults to sys.argv[1:]."""
    if argv and argv[0] not in ("train", "grid", "-h", "--help"):
        argv = ["train", *argv]  # so `python train.py cf --model mf ...` works without the word train
    cmd = tyro.extras.subcommand_cli_from_dict(
        {"train": CFTrainCommand, "grid": CFGridCommand}, args=argv, prog="python -m cora_jax.cf"
    )
    return run_cf(cmd)
