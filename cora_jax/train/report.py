"""`eval.py report RUN_DIR... --out DIR`: finished results files -> report.md (a Table-3-style table, a
Table-4-style table over CoRA runs with different `targets`, an ID-only vs with-text table as in the paper's
Fig. 6), warm_cold.png and, when some method has both forms, id_only.png. Reads results files only, plus
the per-row test scores (scores.jsonl beside results.json) for a paired DeLong test of each method against a
reference method (`--versus`, default CoRA-MF), in report.md and report.json, and the training metrics of the
inputs that have them (DIR/metrics.jsonl) for curves.png (cora_jax/train/curves.py).

Each RUN_DIR may be a CoRA run dir (RUN/eval/results.json, targets from RUN/config.json), an eval /
zero-shot / demo output dir or a CF run dir (DIR/results.json), or a results.json path. Here: the tables and
report.json; the records are read in report_records.py, compared in paired_test.py and drawn in report_figures.py.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib

from cora_jax.run_files import SCORES
from cora_jax.train.curves import load_curves, plot_curves
from cora_jax.train.evaluate import PAPER_ML1M, PAPER_ML1M_TARGETS
from cora_jax.train.paired_test import DEFAULT_VERSUS, paired_vs_reference
from cora_jax.train.report_figures import plot_id_only, plot_warm_cold
from cora_jax.train.report_records import EXPECTED, auc_on_test, id_only_pairs, load_results, method_with_targets, pair_key


def _signed(x: float | None) -> str:
    return "–" if x is None else "nan" if math.isnan(x) else f"{x:+.4f}"


def _p_value(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.1e}" if x < 1e-4 else f"{x:.4f}"


def paper_delta(r: dict, ref: dict) -> float | None:
    """The paper's ML-1M test AUC of record r's method minus the reference's; None when the paper has either
    not (the paper's figures are with the titles in the prompt, so an ID-only run has none)."""
    a, b = (PAPER_ML1M.get(x["method"], (None,))[0] if x["with_titles"] else None for x in (r, ref))
    return None if a is None or b is None else a - b


def paper_ordering(paper_d: float | None, ci95: tuple[float, float]) -> str:
    """Whether the paper's order of a method and the reference holds on our rows: 'holds' / 'reversed' when the
    95% CI of our paired ΔAUC excludes 0 on the paper's / the other side, 'not resolved' when it spans 0."""
    if paper_d is None or paper_d == 0 or any(math.isnan(x) for x in ci95):
        return "–"
    lo, hi = ci95
    if lo <= 0 <= hi:
        return "not resolved"
    return "holds" if (lo > 0) == (paper_d > 0) else "reversed"


def paired_section(paired: dict) -> list[str]:
    """report.md's section on each method against the reference (paired_vs_reference's result)."""
    ref = paired["reference"]
    lines = ["## Paired significance vs the reference" + (f": {ref['label']}" if ref else ""), ""]
    if ref is None:
        return lines + [paired["note"], ""]
    chosen = (f"chosen with `--versus {paired['versus']}`" if paired["explicit"]
              else f"the default `--versus {paired['versus']}`")
    lines += [f"Reference method: **{ref['label']}** (`{ref['source']}`; {chosen}). Each other method against it on "
              f"the test rows both scored, matched by (uid, iid) in their {SCORES}: AUC on those rows, ΔAUC = "
              "method − reference (negative: the reference ranks better), its 95% CI and the two-sided p-value of "
              "DeLong's test for two correlated ROC curves. Paper ΔAUC: the same difference in the paper's table; "
              "its order holds here when our CI excludes 0 on its side, is reversed when it excludes 0 on the "
              "other, and is not resolved when it spans 0.", ""]
    if paired["note"]:
        lines += [paired["note"], ""]
    table = []
    for r, c in paired["rows"]:
        if isinstance(c, str):
            table.append([r["label"], "–", "–", "–", "–", "–", "–", "–", "–", f"no per-row test scores: {c}"])
            continue
        partial = c["rows"] < max(c["rows_method"], c["rows_reference"])
        paper_d = paper_delta(r, ref)
        table.append([r["label"], str(c["rows"]), _num(c["auc"]), _num(c["auc_reference"]), _signed(c["delta_auc"]),
                      f"[{_signed(c['ci95'][0])}, {_signed(c['ci95'][1])}]", _p_value(c["p"]), _signed(paper_d),
                      paper_ordering(paper_d, c["ci95"]),
                      f"the rows both scored: {c['rows']} of the method's {c['rows_method']} and the reference's "
                      f"{c['rows_reference']}" if partial else ""])
    return lines + _table(["method", "paired test rows", "AUC", "reference AUC", f"ΔAUC vs {ref['label']}", "95% CI",
                           "p (DeLong)", "paper ΔAUC", "paper's order here", "note"], table) + [""]


def _finite(x):
    """x with every NaN float as None, for strict JSON."""
    if isinstance(x, float):
        return None if math.isnan(x) else x
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def report_json(records: list[dict], paired: dict) -> dict:
    """report.json: the reference and, per input method, its figures in report.md and its paired comparison."""
    ref = paired["reference"]
    vs = {id(r): c for r, c in paired["rows"]}
    methods = []
    for r in records:
        c = vs.get(id(r))
        paper = PAPER_ML1M.get(r["method"], (None, None))
        paper_d = paper_delta(r, ref) if ref and isinstance(c, dict) else None
        methods.append({
            **{k: r[k] for k in ("label", "method", "with_titles", "targets", "data", "llm", "run", "source")},
            "splits": {s: {k: m.get(k) for k in ("auc", "uauc", "rows")} for s in ("test", "test_warm", "test_cold")
                       if (m := r["splits"].get(s))},
            "paper_auc": paper[0], "paper_uauc": paper[1], "is_reference": r is ref,
            "vs_reference": c if isinstance(c, dict) else None,
            "paper_delta_auc": paper_d, "paper_order_here": paper_ordering(paper_d, c["ci95"]) if paper_d is not None else None,
            "vs_reference_note": c if isinstance(c, str) else None})
    return _finite({
        "reference": {"versus": paired["versus"], "chosen_with_versus": paired["explicit"],
                      "label": ref["label"] if ref else None, "source": ref["source"] if ref else None},
        "paired_split": "test", "delta": "method AUC - reference AUC on the rows both scored, matched by (uid, iid)",
        "test": "DeLong's test for two correlated ROC curves: 95% normal CI and two-sided p",
        "note": paired["note"], "methods": methods})


def _num(x) -> str:
    return "–" if x is None else "nan" if math.isnan(x) else f"{x:.4f}"


def _metric(r: dict, split: str, key: str) -> str:
    m = r["splits"].get(split)
    return _num(m.get(key)) if m else "–"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(cells) + " |" for cells in [header, ["---"] * len(header), *rows]]


def _paper(table: dict, key: str) -> list[str]:
    return [_num(v) for v in table.get(key, (None, None))]


def markdown(records: list[dict], paired: dict | None = None) -> str:
    """report.md; paired (paired_vs_reference's result) adds the section on each method against the reference."""
    t3 = [[r["label"], *(_metric(r, s, k) for s, k in (("test", "auc"), ("test", "uauc"), ("test_warm", "auc"),
                                                        ("test_cold", "auc"))),
           *_paper(PAPER_ML1M, r["method"]), str((r["splits"].get("test") or {}).get("rows", "–")),
           r["data"], r["llm"], f"`{r['source']}`"] for r in records if r["with_titles"]]
    lines = ["# CoRA report", "",
             "Paper columns: the paper's numbers, **Vicuna-7B on ML-1M**. Ours: the LLM and data each row names "
             "(the row's results file is in the last column).", "",
             "## Table 3: methods (test; warm / cold = test_warm / test_cold)", "",
             "Runs with the titles in the prompt; ID-only runs are compared in the Fig. 6 section.", "",
             *_table(["method", "test AUC", "test UAUC", "warm AUC", "cold AUC", "paper AUC", "paper UAUC",
                      "test rows", "data", "LLM", "source"], t3), "",
             *(paired_section(paired) if paired else []),
             "## Table 4: CoRA weight types (`model.targets`)", ""]
    cora = [r for r in records if r["targets"] and r["with_titles"]]
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
    lines += ["", "## ID-only vs with text (Fig. 6)", ""]
    pairs = id_only_pairs(records)
    if not pairs:
        lines.append("No method has both an ID-only and a with-text run (same data, LLM and CoRA `targets`) among "
                     "the inputs: no comparison table and no id_only.png.")
    else:
        fig6 = []
        for t, i in pairs:
            a, b = auc_on_test(t), auc_on_test(i)
            fig6.append([method_with_targets(t), t["data"], t["llm"], _num(a), _num(b),
                         _num(None if a is None or b is None else b - a), f"`{t['source']}`", f"`{i['source']}`"])
        lines += ["Test AUC with the titles in the prompt and with item IDs only; difference = ID-only − with "
                  "text (negative: the text helps).", "",
                  *_table(["method", "data", "LLM", "with-text test AUC", "ID-only test AUC", "difference",
                           "with-text source", "ID-only source"], fig6), "",
                  "![ID-only vs with-text test AUC](id_only.png)"]
    with_text = {pair_key(r) for r in records if r["with_titles"]}
    if alone := [r for r in records if not r["with_titles"] and pair_key(r) not in with_text]:
        lines += ["", "ID-only runs without a with-text twin: " + ", ".join(
            f"{r['label']} (test AUC {_metric(r, 'test', 'auc')}, `{r['source']}`)" for r in alone) + "."]
    lines += ["", "## Figures", "", "![warm and cold AUC](warm_cold.png)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="eval.py report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help=EXPECTED)
    ap.add_argument("--out", required=True,
                    help="output folder (created): report.md, report.json, warm_cold.png, id_only.png, curves.png")
    ap.add_argument("--versus", metavar="NAME",
                    help=f"the reference method of the paired DeLong test: a method (default {DEFAULT_VERSUS}) or a "
                         "row's label in report.md, e.g. 'CoRA-MF [run]'")
    a = ap.parse_args(argv)
    records = load_results(a.runs)  # a ReportError here reaches the entry point: one line, before any output
    paired = paired_vs_reference(records, a.versus or DEFAULT_VERSUS, explicit=a.versus is not None)
    curves = load_curves(a.runs)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_warm_cold(records, out / "warm_cold.png")
    if pairs := id_only_pairs(records):
        plot_id_only(pairs, out / "id_only.png")
    if curves:
        plot_curves(curves, out / "curves.png")
    figure = "\n![training loss and valid AUC against step](curves.png)\n" if curves else ""
    (out / "report.md").write_text(markdown(records, paired) + figure)
    (out / "report.json").write_text(json.dumps(report_json(records, paired), indent=2, ensure_ascii=False) + "\n")
    print(out / "report.md")
