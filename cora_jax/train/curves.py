"""Training curves for `eval.py report`: the training loss and the valid AUC of every input with a metrics.jsonl
(a CoRA / baseline run dir, or a seed-study folder), against step, as one PNG of two panels, one line per run.

The points are the training loop's "eval" events: {"event": "eval", "step", "valid_auc", "train_loss", ...}, the
loss being the mean over the steps since the previous evaluation.
"""
from __future__ import annotations

import math
import pathlib

from cora_jax.run_files import ReportError, json_lines
from cora_jax.train.report_records import short_run_names

METRICS = "metrics.jsonl"


def read_curve(path: pathlib.Path) -> dict[str, list]:
    """{step, train_loss, valid_auc} lists of a metrics.jsonl's eval events by step. A resumed run evaluates the
    steps it retrained again: the last event of a step wins."""
    by_step: dict[int, dict] = {}
    for k, e in json_lines(path):
        if isinstance(e, dict) and e.get("event") == "eval":
            if not isinstance(e.get("step"), int):
                raise ReportError(f"{path}:{k}: an eval event without an integer 'step'")
            by_step[e["step"]] = e
    steps = sorted(by_step)
    return {"step": steps, **{key: [_number(by_step[s].get(key)) for s in steps] for key in ("train_loss", "valid_auc")}}


def _number(x) -> float:
    """A plotted value; a missing one is a gap (NaN)."""
    return float(x) if isinstance(x, (int, float)) else math.nan


def load_curves(inputs: list[str]) -> list[dict]:
    """{run (its shortest distinct folder name), source (the metrics.jsonl), step, train_loss, valid_auc} of each
    input folder whose metrics.jsonl holds an evaluation, in input order; other inputs are left out."""
    files = [p / METRICS for p in map(pathlib.Path, inputs) if (p / METRICS).is_file()]
    names = short_run_names([str(f) for f in files])
    curves = [{"run": names[str(f)], "source": str(f), **read_curve(f)} for f in files]
    return [c for c in curves if c["step"]]


def plot_curves(curves: list[dict], path: str | pathlib.Path) -> None:
    """Two panels against step: training loss and valid AUC, one line per run (markers: the evaluations)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for k, c in enumerate(curves):
        style = {"color": f"C{k % 10}", "linestyle": ("-", "--", ":", "-.")[k // 10 % 4], "marker": "o", "ms": 3}
        loss_ax.plot(c["step"], c["train_loss"], label=c["run"], **style)
        auc_ax.plot(c["step"], c["valid_auc"], label=c["run"], **style)
    auc_ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    loss_ax.set_ylabel("training loss (mean since the previous evaluation)")
    auc_ax.set_ylabel("valid AUC (early-stopping rows)")
    for ax in (loss_ax, auc_ax):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    auc_ax.legend(fontsize=7, title="run")
    fig.suptitle("Training curves (dashed = chance)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

