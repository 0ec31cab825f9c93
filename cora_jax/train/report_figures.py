"""The report's figures: warm vs cold test AUC per method, and ID-only vs with-text test AUC."""
from __future__ import annotations

import math
import pathlib

from cora_jax.train.report_records import auc_on_test, method_with_targets


def _grouped_bars(path: str | pathlib.Path, series: list[tuple[str, str, list]], ticks: list[str], *, width_per_group: float,
                  value_size: int, ylabel: str, title: str, legend: str) -> None:
    """Two bars per group (series: (name, colour, values)), values on the bars, "–" and an empty bar where a
    value is missing, a dashed chance line; written as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [[None if a is None or math.isnan(a) else a for a in row] for _, _, row in series]
    bottom = min([0.4] + [a - 0.05 for row in values for a in row if a is not None])
    fig, ax = plt.subplots(figsize=(max(8.0, width_per_group * len(ticks) + 1), 5.5))
    width = 0.38
    for j, ((name, color, _), row) in enumerate(zip(series, values)):
        xs = [i + (j - 0.5) * width for i in range(len(ticks))]
        ax.bar(xs, [bottom if a is None else a for a in row], width, color=color, label=name)
        for x, a in zip(xs, row):
            ax.text(x, (bottom if a is None else a) + 0.005, "–" if a is None else f"{a:.3f}", ha="center",
                    va="bottom", fontsize=value_size)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    _set_ticks(ax, ticks)
    ax.set_ylim(bottom, 1.02)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(title=legend)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_warm_cold(records: list[dict], path: str | pathlib.Path) -> None:
    """Grouped bars: test_warm and test_cold AUC per method."""
    series = [(name, color, [(r["splits"].get(split) or {}).get("auc") for r in records])
              for split, name, color in (("test_warm", "warm", "tab:orange"), ("test_cold", "cold", "tab:blue"))]
    ticks = [r["label"].replace(" [", "\n[") + f"\n({r['data']})" for r in records]
    _grouped_bars(path, series, ticks, width_per_group=1.2, value_size=7, ylabel="AUC", legend="test view",
                  title="Warm vs cold test AUC\n(run in square brackets, data in round ones; dashed = chance)")


def _set_ticks(ax, ticks: list[str]) -> None:
    """Horizontal tick labels for a few short ones; slanted once they would run into each other."""
    many = len(ticks) > 6 or max(len(line) for t in ticks for line in t.split("\n")) > 16
    ax.set_xticks(range(len(ticks)), ticks, fontsize=8, rotation=30 if many else 0, ha="right" if many else "center",
                  rotation_mode="anchor")


def plot_id_only(pairs: list[tuple[dict, dict]], path: str | pathlib.Path) -> None:
    """Grouped bars: with-text and ID-only test AUC per method."""
    series = [(name, color, [auc_on_test(p[j]) for p in pairs])
              for j, (name, color) in enumerate((("with text", "tab:green"), ("ID-only", "tab:grey")))]
    ticks = [f"{method_with_targets(t)}\n({t['data']})" for t, _ in pairs]
    if len(set(ticks)) < len(ticks):  # repeated runs of one method: name the runs
        ticks = [f"{tick}\ntext: {t['run']}\nID-only: {i['run']}" for tick, (t, i) in zip(ticks, pairs)]
    _grouped_bars(path, series, ticks, width_per_group=1.8, value_size=8, ylabel="test AUC", legend="prompt",
                  title="ID-only vs with-text prompt, test AUC\n(data in brackets; dashed = chance)")
