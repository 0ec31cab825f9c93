"""`eval.py report RUN_DIR... --out DIR`: finished results files -> report.md (a Table-3-style table, a
Table-4-style table over CoRA runs with different `targets`, an ID-only vs with-text table as in the paper's
Fig. 6), warm_cold.png and, when some method has both forms, id_only.png. Reads results files only, plus
the per-row test scores (scores.jsonl beside results.json) for a paired DeLong test of each method against a
reference method (`--versus`, default CoRA-MF), in report.md and report.json, and the training metrics of the
inputs that have them (DIR/metrics.jsonl) for curves.png (cora_jax/train/curves.py).

Each RUN_DIR may be a CoRA run dir (RUN/eval/results.json, targets from RUN/config.json), an eval /
zero-shot / demo output dir or a CF run dir (DIR/results.json), or a results.json path.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import pathlib

import numpy as np

from cora_jax.metrics import delong_paired
from cora_jax.run_files import SCORES, ReportError, read_scores
from cora_jax.train.evaluate import CF_NAMES, PAPER_ML1M, PAPER_ML1M_TARGETS

EXPECTED = ("a CoRA run dir (with eval/results.json), an eval / zero-shot / demo output dir or a CF run dir "
            "(with results.json), or a results.json file")
DEFAULT_VERSUS = "CoRA-MF"


def _results_path(arg: str) -> tuple[pathlib.Path, pathlib.Path | None]:
    """(results.json, the CoRA run dir whose config.json names the targets, if known)."""
    p = pathlib.Path(arg)
    if p.is_file():
        return p, None
    if (p / "eval" / "results.json").is_file():
        return p / "eval" / "results.json", p
    if (p / "results.json").is_file():  # a config.json beside it (as under results/) is its run's
        return p / "results.json", p if (p / "config.json").is_file() else None
    raise ReportError(f"{arg}: expected {EXPECTED}" + (" (a CoRA run needs `eval.py --run` first)"
                                                      if (p / "config.json").is_file() else ""))


def _cora_targets(run_dir: pathlib.Path | None) -> str | None:
    """The run's `model.targets`, or None without a config or when the run trained a baseline (whose
    config still carries the unused CoRA defaults)."""
    cfg = run_dir / "config.json" if run_dir else None
    if not (cfg and cfg.is_file()):
        return None
    c = json.loads(cfg.read_text())
    return c["model"]["targets"] if c.get("method", {}).get("kind", "cora") == "cora" else None


def load_results(paths: list[str]) -> list[dict]:
    """One record per (input, model): method (the paper's name, no suffix), with_titles, source (the results
    file), run (its folder's shortest distinct name), label (method, "(ID-only)" when so, plus [run] when two
    share it), data, llm, targets (CoRA rows of CoRA runs with a known config; Table 4 takes those with text),
    splits {name: metrics}, name (the model's name in the file) and scores (the scores.jsonl beside it, or None)."""
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
        scores = next((str(f) for f in (path.parent / SCORES, path.parent / f"{SCORES}.gz") if f.is_file()), None)
        if "models" not in res:  # a CF run: its splits at the top level
            splits = {k: v for k, v in res.items() if isinstance(v, dict) and "auc" in v}
            records.append({**base, "method": CF_NAMES.get(res["model"], res["model"]), "with_titles": True,
                            "llm": "–", "targets": None, "splits": splits, "name": res["model"], "scores": scores})
            continue
        targets = _cora_targets(run_dir or (pathlib.Path(res["run"]) if res.get("run") else None))
        for i, (name, splits) in enumerate(res["models"].items()):
            method = name.split(" (")[0]  # "MF (CF, same rows)", "TALLRec (ID-only)" -> the paper's name
            # The file's flag is the prompt of its first model (the run's method); the CF model reads no prompt.
            with_titles = not name.endswith(" (ID-only)") and not (i == 0 and res.get("with_titles") is False)
            cf_row = name.endswith("(CF, same rows)")
            if cf_row and any(r["method"] == method and r["data"] == base["data"] and r["splits"] == splits
                              for r in records):
                continue  # runs scored on the same rows repeat the CF model's identical row: keep one
            records.append({**base, "method": method, "with_titles": with_titles, "name": name, "scores": scores,
                            "llm": "–" if cf_row else res.get("llm", "–"), "splits": splits,
                            "targets": targets if method.startswith("CoRA") else None})
    run_names = _short_run_names([r["source"] for r in records])
    for r in records:
        r["run"] = run_names[r["source"]]
        r["label"] = r["method"] if r["with_titles"] else f"{r['method']} (ID-only)"
    counts = collections.Counter(r["label"] for r in records)
    for r in records:
        if counts[r["label"]] > 1:
            r["label"] = f"{r['label']} [{r['run']}]"
    return records


def _short_run_names(sources: list[str]) -> dict[str, str]:
    """Each results file's folder, named by as few trailing path parts as set it apart from the other folders.
    A run's own `eval/` folder counts as the run, and another eval* folder keeps its parent (the run) in its
    name: runs/a/eval beside runs/a/eval-full -> "a", "a/eval-full"; x/b beside y/b -> "x/b", "y/b"."""
    folders = {s: pathlib.PurePath(s).parent for s in sources}
    folders = {s: f.parent if f.name == "eval" else f for s, f in folders.items()}
    distinct = set(folders.values())

    def name(f: pathlib.PurePath) -> str:
        for k in range(2 if f.name.startswith("eval") else 1, len(f.parts) + 1):
            suffix = f.parts[-k:]
            if all(g.parts[-k:] != suffix for g in distinct - {f}):
                return "/".join(suffix)
        return str(f)
    return {s: name(f) for s, f in folders.items()}


def _test_auc(r: dict) -> float | None:
    return (r["splits"].get("test") or {}).get("auc")


def _pair_key(r: dict) -> tuple:
    return r["method"], r["targets"], r["data"], r["llm"]


def id_only_pairs(records: list[dict]) -> list[tuple[dict, dict]]:
    """(with text, ID-only) record pairs of one method (CoRA: and `targets`) on the same data and LLM, the paper's
    Fig. 6 comparison; every combination when a form occurs more than once."""
    groups = collections.defaultdict(lambda: ([], []))
    for r in records:
        groups[_pair_key(r)][0 if r["with_titles"] else 1].append(r)
    return [(t, i) for text, ids in groups.values() for t in text for i in ids]


def _row_keys(uid: np.ndarray, iid: np.ndarray) -> np.ndarray:
    keys = np.empty(len(uid), dtype=[("uid", np.int64), ("iid", np.int64)])
    keys["uid"], keys["iid"] = uid, iid
    return keys


def scored_test_rows(r: dict, cache: dict[str, list[dict]]) -> dict[str, np.ndarray] | str:
    """The record's test rows in its scores.jsonl as arrays uid, iid, label, score and key (uid, iid), or why it
    has none. Rows are tagged with the model's name in results.json or, as zero-shot's "ICL", its method name;
    cache: path -> rows, so each file is read once."""
    if r["scores"] is None:
        return f"no {SCORES} beside the results file"
    if r["scores"] not in cache:
        cache[r["scores"]] = read_scores(r["scores"])
    test = [x for x in cache[r["scores"]] if x["split"] == "test"]
    tags = {x["model"] for x in test}
    tag = r["name"] if r["name"] in tags else r["method"] if r["method"] in tags else None
    if tag is None:
        return f"{SCORES} has no test rows of {r['name']}"
    rows = [x for x in test if x["model"] == tag]
    cols = {}
    for field, dtype in (("uid", np.int64), ("iid", np.int64), ("label", np.int64), ("score", np.float64)):
        try:
            cols[field] = np.array([x[field] for x in rows], dtype=dtype)
        except (TypeError, ValueError) as e:
            raise ReportError(f"{r['scores']}: field '{field}' of {tag}'s test rows is not a number ({e})") from e
    if not np.isin(cols["label"], (0, 1)).all():
        raise ReportError(f"{r['scores']}: field 'label' of {tag}'s test rows is not 0 / 1")
    if not np.isfinite(cols["score"]).all():
        raise ReportError(f"{r['scores']}: field 'score' of {tag}'s test rows is not a finite number")
    cols["key"] = _row_keys(cols["uid"], cols["iid"])
    ordered = np.sort(cols["key"])
    if len(twice := ordered[1:][ordered[1:] == ordered[:-1]]):
        raise ReportError(f"{r['scores']}: {tag} scored the test row uid {twice[0]['uid']}, iid {twice[0]['iid']} "
                          "more than once")
    return cols


def compare_paired(r: dict, s: dict[str, np.ndarray], ref: dict, s_ref: dict[str, np.ndarray]) -> dict:
    """DeLong's test of record r against the reference on the test rows both scored, matched by (uid, iid)."""
    _, i, j = np.intersect1d(s["key"], s_ref["key"], assume_unique=True, return_indices=True)
    if not len(i):
        raise ReportError(f"{r['label']} ({r['scores']}) and the reference {ref['label']} ({ref['scores']}) scored "
                          "no test row in common (rows matched by uid, iid)")
    if len(bad := np.flatnonzero(s["label"][i] != s_ref["label"][j])):
        k = i[bad[0]]
        raise ReportError(f"{r['scores']} and {ref['scores']}: field 'label' differs on {len(bad)} of the {len(i)} "
                          f"test rows both scored (first: uid {s['uid'][k]}, iid {s['iid'][k]})")
    t = delong_paired(s["label"][i], s["score"][i], s_ref["score"][j])
    return {"rows": len(i), "rows_method": len(s["key"]), "rows_reference": len(s_ref["key"]),
            "positives": t.positives, "negatives": t.negatives, "auc": t.auc, "auc_reference": t.auc_reference,
            "delta_auc": t.delta, "se": t.se, "ci95": [t.ci_low, t.ci_high], "p": t.p}


def paired_vs_reference(records: list[dict], versus: str = DEFAULT_VERSUS, explicit: bool = False) -> dict:
    """Every other record against the reference: the first input labelled `versus` or else the first with-text
    one of method `versus`, preferring one with per-row test scores. Returns {versus, explicit, reference (a
    record or None), note (why nothing or what was chosen; may be ""), rows [(record, compare_paired dict or why
    there is none)]}. With explicit (--versus given), a reference that is missing or has no scores is an error."""
    cache: dict[str, list[dict]] = {}
    scores = [scored_test_rows(r, cache) for r in records]
    named = [k for k, r in enumerate(records) if r["label"] == versus] or [
        k for k, r in enumerate(records) if r["method"] == versus and r["with_titles"]]
    scored = [k for k in named if not isinstance(scores[k], str)]
    out = {"versus": versus, "explicit": explicit, "reference": None, "note": "", "rows": []}
    if not scored:
        why = (f"no input is labelled or named {versus} (labels: {', '.join(r['label'] for r in records)})"
               if not named else f"{records[named[0]]['label']} has no per-row test scores "
                                 f"({scores[named[0]]}; `{records[named[0]]['source']}`)")
        if explicit:
            raise ReportError(f"--versus {versus}: {why}")
        return {**out, "note": f"No paired comparison: {why}. Name a reference with `--versus NAME`."}
    ref = scored[0]
    if len(named) > 1:
        out["note"] = (f"{len(named)} inputs match `{versus}` ({', '.join(records[k]['label'] for k in named)}); the "
                       "reference is the first with per-row test scores. Name another with `--versus 'LABEL'`.")
    rows = [(r, s if isinstance(s, str) else compare_paired(r, s, records[ref], scores[ref]))
            for k, (r, s) in enumerate(zip(records, scores)) if k != ref]
    return {**out, "reference": records[ref], "rows": rows}


def _signed(x: float | None) -> str:
    return "–" if x is None else "nan" if math.isnan(x) else f"{x:+.4f}"


def _p_value(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.1e}" if x < 1e-4 else f"{x:.4f}"


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
              "DeLong's test for two correlated ROC curves.", ""]
    if paired["note"]:
        lines += [paired["note"], ""]
    table = []
    for r, c in paired["rows"]:
        if isinstance(c, str):
            table.append([r["label"], "–", "–", "–", "–", "–", "–", f"no per-row test scores: {c}"])
            continue
        partial = c["rows"] < max(c["rows_method"], c["rows_reference"])
        table.append([r["label"], str(c["rows"]), _num(c["auc"]), _num(c["auc_reference"]), _signed(c["delta_auc"]),
                      f"[{_signed(c['ci95'][0])}, {_signed(c['ci95'][1])}]", _p_value(c["p"]),
                      f"the rows both scored: {c['rows']} of the method's {c['rows_method']} and the reference's "
                      f"{c['rows_reference']}" if partial else ""])
    return lines + _table(["method", "paired test rows", "AUC", "reference AUC", f"ΔAUC vs {ref['label']}", "95% CI",
                           "p (DeLong)", "note"], table) + [""]


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
        methods.append({
            **{k: r[k] for k in ("label", "method", "with_titles", "targets", "data", "llm", "run", "source")},
            "splits": {s: {k: m.get(k) for k in ("auc", "uauc", "rows")} for s in ("test", "test_warm", "test_cold")
                       if (m := r["splits"].get(s))},
            "paper_auc": paper[0], "paper_uauc": paper[1], "is_reference": r is ref,
            "vs_reference": c if isinstance(c, dict) else None,
            "vs_reference_note": c if isinstance(c, str) else None})
    return _finite({
        "reference": {"versus": paired["versus"], "chosen_with_versus": paired["explicit"],
                      "label": ref["label"] if ref else None, "source": ref["source"] if ref else None},
        "paired_split": "test", "delta": "method AUC - reference AUC on the rows both scored, matched by (uid, iid)",
        "test": "DeLong's test for two correlated ROC curves: 95% normal CI and two-sided p",
        "note": paired["note"], "methods": methods})


def _method_cell(r: dict) -> str:
    return f"{r['method']} ({r['targets']})" if r["targets"] else r["method"]


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
            a, b = _test_auc(t), _test_auc(i)
            fig6.append([_method_cell(t), t["data"], t["llm"], _num(a), _num(b),
                         _num(None if a is None or b is None else b - a), f"`{t['source']}`", f"`{i['source']}`"])
        lines += ["Test AUC with the titles in the prompt and with item IDs only; difference = ID-only − with "
                  "text (negative: the text helps).", "",
                  *_table(["method", "data", "LLM", "with-text test AUC", "ID-only test AUC", "difference",
                           "with-text source", "ID-only source"], fig6), "",
                  "![ID-only vs with-text test AUC](id_only.png)"]
    with_text = {_pair_key(r) for r in records if r["with_titles"]}
    if alone := [r for r in records if not r["with_titles"] and _pair_key(r) not in with_text]:
        lines += ["", "ID-only runs without a with-text twin: " + ", ".join(
            f"{r['label']} (test AUC {_metric(r, 'test', 'auc')}, `{r['source']}`)" for r in alone) + "."]
    lines += ["", "## Figures", "", "![warm and cold AUC](warm_cold.png)"]
    return "\n".join(lines) + "\n"


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
    ticks = [r["label"].replace(" [", "\n[") + f"\n({pathlib.PurePath(r['data']).name})" for r in records]
    _grouped_bars(path, series, ticks, width_per_group=1.2, value_size=7, ylabel="AUC", legend="test view",
                  title="Warm vs cold test AUC\n(run in square brackets, data in round ones; dashed = chance)")


def _set_ticks(ax, ticks: list[str]) -> None:
    """Horizontal tick labels for a few short ones; slanted once they would run into each other."""
    many = len(ticks) > 6 or max(len(line) for t in ticks for line in t.split("\n")) > 16
    ax.set_xticks(range(len(ticks)), ticks, fontsize=8, rotation=30 if many else 0, ha="right" if many else "center",
                  rotation_mode="anchor")


def plot_id_only(pairs: list[tuple[dict, dict]], path: str | pathlib.Path) -> None:
    """Grouped bars: with-text and ID-only test AUC per method."""
    series = [(name, color, [_test_auc(p[j]) for p in pairs])
              for j, (name, color) in enumerate((("with text", "tab:green"), ("ID-only", "tab:grey")))]
    ticks = [f"{_method_cell(t)}\n({pathlib.PurePath(t['data']).name})" for t, _ in pairs]
    if len(set(ticks)) < len(ticks):  # repeated runs of one method: name the runs
        ticks = [f"{tick}\ntext: {t['run']}\nID-only: {i['run']}" for tick, (t, i) in zip(ticks, pairs)]
    _grouped_bars(path, series, ticks, width_per_group=1.8, value_size=8, ylabel="test AUC", legend="prompt",
                  title="ID-only vs with-text prompt, test AUC\n(data in brackets; dashed = chance)")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="eval.py report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help=EXPECTED)
    ap.add_argument("--out", required=True,
                    help="output folder (created): report.md, report.json, warm_cold.png, id_only.png, curves.png")
    ap.add_argument("--versus", metavar="NAME",
                    help=f"the reference method of the paired DeLong test: a method (default {DEFAULT_VERSUS}) or a "
                         "row's label in report.md, e.g. 'CoRA-MF [run]'")
    a = ap.parse_args(argv)
    from cora_jax.train.curves import load_curves, plot_curves  # here: curves imports this module

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
