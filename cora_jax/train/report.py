"""`eval.py report RUN_DIR... --out DIR`: finished results files -> report.md (a Table-3-style table, a
Table-4-style table over CoRA runs with different `targets`) and warm_cold.png. Reads results files only.

Each RUN_DIR may be a CoRA run dir (RUN/eval/results.json, targets from RUN/config.json), an eval /
zero-shot / demo output dir or a CF run dir (DIR/results.json), or a results.json path.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import pathlib
import sys

from cora_jax.train.evaluate import CF_NAMES, PAPER_ML1M, PAPER_ML1M_TARGETS

EXPECTED = ("a CoRA run dir (with eval/results.json), an eval / zero-shot / demo output dir or a CF run dir "
            "(with results.json), or a results.json file")


class ReportError(ValueError):
    pass


def _results_path(arg: str) -> tuple[pathlib.Path, pathlib.Path | None]:
    """(results.json, the CoRA run dir whose config.json names the targets, if known)."""
    p = pathlib.Path(arg)
    if p.is_file():
        return p, None
    if (p / "eval" / "results.json").is_file():
        return p / "eval" / "results.json", p
    if (p / "results.json").is_file():
        return p / "results.json", None
    raise ReportError(f"{arg}: expected {EXPECTED}" + (" (a CoRA run needs `eval.py --run` first)"
                                                      if (p / "config.json").is_file() else ""))


def _targets(run_dir: pathlib.Path | None) -> str | None:
    cfg = run_dir / "config.json" if run_dir else None
    return json.loads(cfg.read_text())["model"]["targets"] if cfg and cfg.is_file() else None


def load_results(paths: list[str]) -> list[dict]:
    """One record per (input, model): method, label (method, plus the path when two share it), source,
    data, llm, targets (CoRA rows of runs with a known config) and splits {name: metrics}."""
    records = []
    for arg in paths:
        path, run_dir = _results_path(arg)
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ReportError(f"{arg}: cannot read {path} as JSON ({e}); expected {EXPECTED}") from e
        if not isinstance(res, dict) or ("models" not in res and "model" not in res):
            raise ReportError(f"{arg}: {path} has neither 'models' (CoRA / zero-shot / demo) nor 'model' (CF); "
                              f"expected {EXPECTED}")
        base = {"source": str(path), "data": res.get("data") or res.get("preset") or "–"}
        if "models" not in res:  # a CF run: its splits at the top level
            splits = {k: v for k, v in res.items() if isinstance(v, dict) and "auc" in v}
            records.append({**base, "method": CF_NAMES.get(res["model"], res["model"]), "llm": "–",
                            "targets": None, "splits": splits})
            continue
        targets = _targets(run_dir or (pathlib.Path(res["run"]) if res.get("run") else None))
        for name, splits in res["models"].items():
            method = name.split(" (")[0]  # "MF (CF, same rows)" -> "MF"
            records.append({**base, "method": method, "llm": res.get("llm", "–"), "splits": splits,
                            "targets": targets if method.startswith("CoRA") else None})
    counts = collections.Counter(r["method"] for r in records)
    for r in records:
        r["label"] = r["method"] if counts[r["method"]] == 1 else f"{r['method']} [{r['source']}]"
    return records


def _num(x) -> str:
    return "–" if x is None else "nan" if math.isnan(x) else f"{x:.4f}"


def _metric(r: dict, split: str, key: str) -> str:
    m = r["splits"].get(split)
    return _num(m.get(key)) if m else "–"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(cells) + " |" for cells in [header, ["---"] * len(header), *rows]]


def _paper(table: dict, key: str) -> list[str]:
    return [_num(v) for v in table.get(key, (None, None))]


def markdown(records: list[dict]) -> str:
    t3 = [[r["label"], *(_metric(r, s, k) for s, k in (("test", "auc"), ("test", "uauc"), ("test_warm", "auc"),
                                                        ("test_cold", "auc"))),
           *_paper(PAPER_ML1M, r["method"]), str((r["splits"].get("test") or {}).get("rows", "–")),
           r["data"], r["llm"], f"`{r['source']}`"] for r in records]
    lines = ["# CoRA report", "",
             "Paper columns: the paper's numbers, **Vicuna-7B on ML-1M**. Ours: the LLM and data each row names "
             "(the row's results file is in the last column).", "",
             "## Table 3: methods (test; warm / cold = test_warm / test_cold)", "",
             *_table(["method", "test AUC", "test UAUC", "warm AUC", "cold AUC", "paper AUC", "paper UAUC",
                      "test rows", "data", "LLM", "source"], t3), "",
             "## Table 4: CoRA weight types (`model.targets`)", ""]
    cora = [r for r in records if r["targets"]]
    targets = sorted({r["targets"] for r in cora})
    if len(targets) < 2:
        lines.append(f"Fewer than two `targets` among the inputs ({', '.join(targets) or 'none'}): no Table 4.")
    else:
        t4 = [[r["targets"], r["label"], r["llm"],
               *(_metric(r, s, k) for s in ("test_warm", "test_cold", "test") for k in ("auc", "uauc")),
               *_paper(PAPER_ML1M_TARGETS, r["targets"]), f"`{r['source']}`"]
              for r in sorted(cora, key=lambda r: r["targets"])]
        lines += ["The paper's Table 4 (CoRA-MF) gives test AUC / UAUC only, not per warm / cold view.", "",
                  *_table(["targets", "method", "LLM", "warm AUC", "warm UAUC", "cold AUC", "cold UAUC", "test AUC",
                           "test UAUC", "paper AUC", "paper UAUC", "source"], t4)]
    lines += ["", "## Figures", "", "![warm and cold AUC](warm_cold.png)", "",
              "ID-only vs with-text (the paper's Fig. 6): not produced, the prompt has no ID-only option yet."]
    return "\n".join(lines) + "\n"


def plot_warm_cold(records: list[dict], path: str | pathlib.Path) -> None:
    """Grouped bars: test_warm and test_cold AUC per method, values on the bars, "–" where missing."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = (("test_warm", "warm", "tab:orange"), ("test_cold", "cold", "tab:blue"))
    aucs = [[(r["splits"].get(split) or {}).get("auc") for r in records] for split, _, _ in views]
    aucs = [[None if a is None or math.isnan(a) else a for a in row] for row in aucs]
    bottom = min([0.4] + [a - 0.05 for row in aucs for a in row if a is not None])
    fig, ax = plt.subplots(figsize=(max(8.0, 2.0 * len(records) + 1), 5))
    width = 0.38
    for j, ((_, name, color), row) in enumerate(zip(views, aucs)):
        xs = [i + (j - 0.5) * width for i in range(len(records))]
        ax.bar(xs, [bottom if a is None else a for a in row], width, color=color, label=name)  # missing: empty bar
        for x, a in zip(xs, row):
            ax.text(x, (bottom if a is None else a) + 0.005, "–" if a is None else f"{a:.3f}", ha="center",
                    va="bottom", fontsize=8)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(records)), [f"{r['label']}\n({pathlib.PurePath(r['data']).name})".replace(" [", "\n[")
                                        for r in records], fontsize=8)
    ax.set_ylim(bottom, 1.02)
    ax.set_ylabel("AUC")
    ax.set_title("Warm vs cold test AUC (data in brackets; dashed = chance)")
    ax.legend(title="test view")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="eval.py report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help=EXPECTED)
    ap.add_argument("--out", required=True, help="output folder (created): report.md, warm_cold.png")
    a = ap.parse_args(argv)
    try:
        records = load_results(a.runs)
    except ReportError as e:
        sys.exit(f"eval.py report: {e}")
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_warm_cold(records, out / "warm_cold.png")
    (out / "report.md").write_text(markdown(records))
    print(out / "report.md")
