"""eval.py report: synthetic results files of each kind -> report.md, report.json, warm_cold.png and id_only.png;
the paired DeLong test against a reference method from synthetic scores.jsonl."""
import json
import pathlib
import re

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cora_jax.metrics import delong_paired
from cora_jax.train.paired_test import scored_test_rows
from cora_jax.train.report import paper_ordering
from cora_jax.train.report_records import load_results, short_run_names
from cora_jax.train.results import ModelResult, models_json
from cli_helpers import error_line
from eval import main


def _m(auc, uauc=0.6, rows=100):
    return {"auc": auc, "uauc": uauc, "uauc_users": 10, "users": 20, "rows": rows}


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.fixture
def inputs(tmp_path):
    cf = tmp_path / "cf-mf"
    _write(cf / "results.json", {"model": "mf", "data": "ml-1m-collm", "test": _m(0.6437, rows=7331),
                                 "test_warm": _m(0.7220), "test_cold": _m(0.4799), "valid": _m(0.6705)})
    zs = tmp_path / "zero-shot"
    _write(zs / "results.json", {"kind": "zero_shot", "data": "/host/data/ml-1m-collm", "llm": "TinyLLM",  # shown by name
                                 "models": {"ICL (zero-shot base LLM)": {"test": _m(0.5123, 0.5011, rows=2000)}}})
    runs = []
    for targets, auc in (("qkvo", 0.7012), ("qk", 0.6543)):
        run = tmp_path / f"cora-{targets}"
        _write(run / "config.json", {"data": "ml-1m-collm", "model": {"targets": targets}})
        _write(run / "eval" / "results.json", {
            "kind": "cora", "run": str(run), "data": "ml-1m-collm", "llm": "TinyLLM",
            "models": {"CoRA-MF": {"test": _m(auc, 0.6111, rows=500), "test_warm": _m(auc + 0.01, 0.6222),
                                   "test_cold": _m(auc - 0.01, 0.6333)},
                       "MF (CF, same rows)": {"test": _m(0.6400, rows=500)}}})
        runs.append(run)
    return [str(cf), str(zs), *map(str, runs)]


def test_report(inputs, tmp_path, capsys):
    out = tmp_path / "report"
    main(["report", *inputs, "--out", str(out)])
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / "report.md")
    md = (out / "report.md").read_text()
    assert "Vicuna-7B on ML-1M" in md
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    cf_row = rows["MF [cf-mf]"]  # twin MF rows: each named by its run folder, not its whole path
    assert "| 0.6437 | 0.6000 | 0.7220 | 0.4799 | 0.6486 | 0.6396 | 7331 |" in cf_row
    assert "| 0.5123 | 0.5011 | – | – | 0.5119 | 0.5178 | 2000 | ml-1m-collm | TinyLLM |" in rows["ICL"]
    cora = [line for line in md.splitlines() if line.startswith("| CoRA-MF [")]
    assert sorted(c.split(" | ")[0] for c in cora) == ["| CoRA-MF [cora-qk]", "| CoRA-MF [cora-qkvo]"]
    assert "| 0.7012 | 0.6111 | 0.7112 | 0.6912 | 0.7361 | 0.6884 | 500 |" in md
    # Table 4: rows by targets, ours warm/cold/test beside the paper's
    assert "| 0.7112 | 0.6222 | 0.6912 | 0.6333 | 0.7012 | 0.6111 | 0.7361 | 0.6884 |" in rows["qkvo"]
    assert "| 0.6643 | 0.6222 | 0.6443 | 0.6333 | 0.6543 | 0.6111 | 0.6784 | 0.5887 |" in rows["qk"]
    assert "ID-only" in md
    png = (out / "warm_cold.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_report_one_targets(inputs, tmp_path):
    out = tmp_path / "report"
    main(["report", *inputs[:3], "--out", str(out)])
    assert "Fewer than two `targets` among the inputs (qkvo): no Table 4." in (out / "report.md").read_text()


def test_report_bad_path(inputs, tmp_path, capsys):
    out = tmp_path / "report"
    for bad in (tmp_path / "nowhere", tmp_path):
        assert re.search(re.escape(f"{bad}: expected a CoRA run dir"), error_line(capsys, main, ["report", inputs[0], str(bad), "--out", str(out)]))
    assert not out.exists()


def _llm_run(root, name, method, kind, with_titles, auc, targets="qkvo", cf=True):
    """A trained run (config.json + eval/results.json) as `eval.py --run` writes it."""
    run = root / name
    _write(run / "config.json", {"data": "ml-1m-collm", "with_titles": with_titles, "model": {"targets": targets},
                                 "method": {"kind": kind}})
    models = {method if with_titles else f"{method} (ID-only)": {"test": _m(auc, rows=500)}}
    if cf:
        models["MF (CF, same rows)"] = {"test": _m(0.6400, rows=500)}
    _write(run / "eval" / "results.json", {"kind": "cora", "method": kind, "with_titles": with_titles,
                                           "run": str(run), "data": "ml-1m-collm", "llm": "TinyLLM",
                                           "models": models})
    return str(run)


def _rows(md):
    return {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}


def test_report_id_only(tmp_path):
    out = tmp_path / "report"
    main(["report", _llm_run(tmp_path, "collm", "CoLLM-MF", "collm", True, 0.7000),
          _llm_run(tmp_path, "collm-ids", "CoLLM-MF", "collm", False, 0.6750), "--out", str(out)])
    md = (out / "report.md").read_text()
    fig6 = md.split("## ID-only vs with text (Fig. 6)")[1]
    row = [line for line in fig6.splitlines() if line.startswith("| CoLLM-MF |")]
    assert len(row) == 1 and "| 0.7000 | 0.6750 | -0.0250 |" in row[0]
    table3 = md.split("## Table 3")[1].split("## Table 4")[0]
    assert "| CoLLM-MF | 0.7000 |" in table3 and "ID-only" not in _rows(table3)  # the twin only in Fig. 6
    assert "![ID-only vs with-text test AUC](id_only.png)" in md
    png = (out / "id_only.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_report_no_id_only_pair(inputs, tmp_path):
    out = tmp_path / "report"
    main(["report", *inputs, "--out", str(out)])
    assert "No method has both an ID-only and a with-text run" in (out / "report.md").read_text()
    assert not (out / "id_only.png").exists()


def test_report_table4_cora_with_text_only(inputs, tmp_path):
    """An ID-only CoRA run and a baseline run (whose config carries CoRA's default targets) stay out of Table 4."""
    out = tmp_path / "report"
    runs = [*inputs[:3], _llm_run(tmp_path, "cora-ids", "CoRA-MF", "cora", False, 0.6600, targets="qk"),
            _llm_run(tmp_path, "cora-ids-qkvo", "CoRA-MF", "cora", False, 0.6800),
            _llm_run(tmp_path, "tallrec", "TALLRec", "tallrec", True, 0.6900, targets="qkv", cf=False)]
    main(["report", *runs, "--out", str(out)])
    md = (out / "report.md").read_text()
    assert "Fewer than two `targets` among the inputs (qkvo): no Table 4." in md
    ids = [r for r in load_results(runs) if not r["with_titles"]]
    assert [(r["method"], r["targets"]) for r in ids] == [("CoRA-MF", "qk"), ("CoRA-MF", "qkvo")]
    assert all(r["label"].startswith("CoRA-MF (ID-only) [") for r in ids)
    assert "| CoRA-MF (qkvo) | ml-1m-collm | TinyLLM | 0.7012 | 0.6800 | -0.0212 |" in md  # twins by targets
    assert "ID-only runs without a with-text twin: CoRA-MF (ID-only) [" in md and "(test AUC 0.6600," in md
    assert "| TALLRec | 0.6900 | 0.6000 | – | – | 0.7044 | 0.6741 | 500 |" in _rows(md)["TALLRec"]


def test_the_cf_row_repeated_by_runs_on_the_same_rows_is_listed_once(inputs):
    records = load_results(inputs)
    cf_rows = [r for r in records if r["method"] == "MF" and r["source"].endswith("eval/results.json")]
    assert len(cf_rows) == 1 and cf_rows[0]["llm"] == "–"  # both CoRA runs scored MF on identical rows
    assert sum(r["method"] == "CoRA-MF" for r in records) == 2


RESULTS = pathlib.Path(__file__).resolve().parents[1] / "results"


def test_the_committed_results_load_by_the_names_eval_py_gave_their_models():
    """results/ holds files written before model entries carried their fields: CF runs (table3) and CoRA-MF runs
    (seeds) scored with MF on the same 2,000 test rows; each model's per-row test scores are found by its tag."""
    seeds = [RESULTS / "seeds" / f"{order}-s{seed}" for order in ("uniform", "bucketed") for seed in (2023, 1, 2)]
    records = load_results([str(RESULTS / "table3" / "mf"), str(RESULTS / "table3" / "lightgcn"), *map(str, seeds)])
    got = [(r["method"], r["role"], r["with_titles"], r["targets"], r["scores_tag"], r["llm"]) for r in records]
    cora = ("CoRA-MF", "method", True, "qkvo", "CoRA-MF", "SmolLM2-135M-Instruct (embedded)")
    assert got == [("MF", "method", True, None, "mf", "–"), ("LightGCN", "method", True, None, "lightgcn", "–"),
                   cora, ("MF", "cf", True, None, None, "–"), *[cora] * 5]  # one MF row for the six runs' identical ones
    assert [r["label"] for r in records[:4]] == ["MF [mf]", "LightGCN", "CoRA-MF [uniform-s2023]", "MF [uniform-s2023]"]
    cache = {}
    rows = [scored_test_rows(r, cache) for r in records]
    assert [len(x["key"]) if isinstance(x, dict) else x for x in rows[:4]] == [
        7331, 7331, 2000, "scores.jsonl has no test rows of MF (CF, same rows)"]


@pytest.mark.parametrize("order", [("cora-mf", "mf"), ("mf", "cora-mf")])
def test_a_cf_run_among_the_inputs_replaces_the_identical_cf_row_of_a_run(order):
    """results/table3: CoRA-MF scored MF beside itself on the whole test split, and MF's own run has the same test
    metrics and per-row scores: one MF row, the run's, whatever the input order."""
    records = load_results([str(RESULTS / "table3" / name) for name in order])
    assert sorted((r["method"], r["role"], r["scores_tag"]) for r in records) == [
        ("CoRA-MF", "method", "CoRA-MF"), ("MF", "method", "mf")]


@pytest.mark.parametrize("kind, models", [
    ("cora", [ModelResult("TALLRec", "method", False, 500, {"test": _m(0.69, rows=500)}, "TALLRec (ID-only)"),
              ModelResult("MF", "cf", True, 500, {"test": _m(0.64, rows=500)}, None)]),
    ("zero_shot", [ModelResult("ICL", "zero-shot", True, 500, {"test": _m(0.51, rows=500)}, "ICL"),
                   ModelResult("SASRec", "cf", True, 500, {"test": _m(0.66, rows=500)}, None)])])
def test_model_entries_with_their_fields_read_as_the_names_that_stood_for_them(tmp_path, kind, models):
    """results.json as eval.py writes it now (each model entry with its fields beside its splits) and as it wrote
    it before (the name alone) give the same records."""
    common = {"kind": kind, "data": "ml-1m-collm", "llm": "TinyLLM", "limit": 500}
    _write(tmp_path / "now" / "results.json", {**common, "models": models_json(models)})
    _write(tmp_path / "before" / "results.json", {**common, "models": {m.name: m.splits for m in models}})
    entries = json.loads((tmp_path / "now" / "results.json").read_text())["models"]
    assert [ModelResult.from_json(e) for e in entries.values()] == models
    assert entries[models[0].name]["test"] == models[0].splits["test"]  # `models[name][split]` reads as before

    def read(folder):
        return [{k: v for k, v in r.items() if k not in ("source", "run")} for r in load_results([str(tmp_path / folder)])]
    assert read("now") == read("before")
    assert [(r["label"], r["role"]) for r in read("now")] == [(("TALLRec (ID-only)", "method") if kind == "cora" else
                                                                ("ICL", "zero-shot")), (models[1].method, "cf")]


def test_a_model_without_fields_under_a_name_eval_py_never_gave_is_refused(tmp_path, capsys):
    _write(tmp_path / "odd" / "results.json", {"kind": "cora", "models": {"CoRA-MF (bf16)": {"test": _m(0.7)}}})
    assert re.search(r"odd/results.json: model 'CoRA-MF \(bf16\)' has no 'role' field",
                     error_line(capsys, main, ["report", str(tmp_path / "odd"), "--out", str(tmp_path / "report")]))


def test_run_names_are_the_shortest_folder_suffixes_that_differ():
    names = short_run_names(["runs/a/eval/results.json", "runs/a/eval-full/results.json", "x/b/results.json",
                              "y/b/results.json", "y/b/results.json"])
    assert names == {"runs/a/eval/results.json": "a", "runs/a/eval-full/results.json": "a/eval-full",
                     "x/b/results.json": "x/b", "y/b/results.json": "y/b"}
    assert short_run_names(["runs/a/eval/results.json", "x/a/eval/results.json"]) == {
        "runs/a/eval/results.json": "runs/a", "x/a/eval/results.json": "x/a"}
    assert short_run_names(["runs/cf/mf/results.json", "runs/cora/eval/results.json"]) == {
        "runs/cf/mf/results.json": "mf", "runs/cora/eval/results.json": "cora"}


def _scored_run(root, name, tag, uid, iid, label, score, key=None):
    """An eval output folder: results.json naming the model `key` (default tag) and scores.jsonl with its test
    rows tagged `tag` (as eval.py writes them), plus valid rows that the paired test must ignore."""
    out = root / name
    _write(out / "results.json", {"kind": "cora", "data": "ml-1m-collm", "llm": "TinyLLM",
                                  "models": {key or tag: {"test": _m(0.7, rows=len(uid))},
                                             "MF (CF, same rows)": {"test": _m(0.6400, rows=len(uid))}}})
    rows = [{"model": tag, "split": split, "uid": int(u), "iid": int(i), "label": int(y), "score": float(s)}
            for split in ("test", "valid") for u, i, y, s in zip(uid, iid, label, score)]
    (out / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(out)


def _paired_rows(md):
    section = md.split("## Paired significance vs the reference")[1].split("## Table 4")[0]
    return section, {line.split(" | ")[0].lstrip("| "): line[2:-2].split(" | ")
                     for line in section.splitlines() if line.startswith("| ") and not line.startswith("| ---")}


def test_report_paired_delong(tmp_path):
    """Each method against CoRA-MF on the rows both scored, matched by (uid, iid) whatever the order; tied scores."""
    rng = np.random.default_rng(0)
    n = 300
    uid, iid = rng.integers(0, 40, n), rng.permutation(n) * 3
    y, shared = rng.integers(0, 2, n), rng.normal(size=n)
    cora, collm, icl = (np.round(w * y + shared + rng.normal(size=n), 1) for w in (1.0, 0.4, 0.0))
    assert len(np.unique(cora)) < n / 3  # many ties
    p = rng.permutation(n)[: n - 20]  # CoLLM scored 280 of the rows, in another order
    runs = [_scored_run(tmp_path, "cora", "CoRA-MF", uid, iid, y, cora),
            _scored_run(tmp_path, "collm", "CoLLM-MF", uid[p], iid[p], y[p], collm[p]),
            _scored_run(tmp_path, "zs", "ICL", uid, iid, y, icl, key="ICL (zero-shot base LLM)"),
            _scored_run(tmp_path, "collm-ids", "CoLLM-MF (ID-only)", uid, iid, y, collm),
            _scored_run(tmp_path, "cora-again", "CoRA-MF", uid[::-1], iid[::-1], y[::-1], cora[::-1] * 2 + 1,
                        key="CoRA-MF")]
    out = tmp_path / "report"
    main(["report", *runs, "--out", str(out)])
    md = (out / "report.md").read_text()
    section, rows = _paired_rows(md)
    assert "Paired significance vs the reference: CoRA-MF [cora]" in md
    assert "Reference method: **CoRA-MF [cora]**" in section and "the default `--versus CoRA-MF`" in section
    assert rows["method"] == ["method", "paired test rows", "AUC", "reference AUC", "ΔAUC vs CoRA-MF [cora]",
                              "95% CI", "p (DeLong)", "paper ΔAUC", "paper's order here", "note"]
    assert "CoRA-MF [cora]" not in rows  # the reference is not compared with itself
    # eval.py writes no per-row scores for the CF model beside the run's own
    assert rows["MF [cora]"][1:9] == ["–"] * 8
    assert rows["MF [cora]"][9] == "no per-row test scores: scores.jsonl has no test rows of MF (CF, same rows)"
    assert "2 inputs match `CoRA-MF` (CoRA-MF [cora], CoRA-MF [cora-again])" in section
    want = delong_paired(y[p], collm[p], cora[p])
    assert abs(want.auc - roc_auc_score(y[p], collm[p])) < 1e-12
    assert rows["CoLLM-MF"][:7] == ["CoLLM-MF", "280", f"{want.auc:.4f}", f"{roc_auc_score(y[p], cora[p]):.4f}",
                                    f"{want.delta:+.4f}", f"[{want.ci_low:+.4f}, {want.ci_high:+.4f}]",
                                    f"{want.p:.1e}" if want.p < 1e-4 else f"{want.p:.4f}"]
    assert rows["CoLLM-MF"][7:9] == ["-0.0333", "holds"]  # the paper: 0.7028 vs 0.7361; here significant too
    assert rows["CoLLM-MF"][9] == "the rows both scored: 280 of the method's 280 and the reference's 300"
    assert want.delta < 0 and want.ci_high < 0  # the reference carries more signal: a negative, significant Δ
    assert rows["ICL"][1] == "300" and rows["ICL"][9] == ""
    assert rows["CoLLM-MF (ID-only)"][7:9] == ["–", "–"]  # the paper's figures are with titles: none to compare  # zero-shot rows are tagged "ICL"
    # the same ranking (rows reversed, scores rescaled): exactly no difference, p 1
    assert rows["CoRA-MF [cora-again]"][4:9] == ["+0.0000", "[+0.0000, +0.0000]", "1.0000", "+0.0000", "–"]

    rep = json.loads((out / "report.json").read_text())
    assert rep["reference"] == {"versus": "CoRA-MF", "chosen_with_versus": False, "label": "CoRA-MF [cora]",
                                "source": str(tmp_path / "cora" / "results.json")}
    methods = {m["label"]: m for m in rep["methods"]}
    assert methods["CoRA-MF [cora]"]["is_reference"] and methods["CoRA-MF [cora]"]["vs_reference"] is None
    c = methods["CoLLM-MF"]["vs_reference"]
    assert (c["rows"], c["rows_method"], c["rows_reference"]) == (280, 280, 300)
    assert c["delta_auc"] == want.delta and c["ci95"] == [want.ci_low, want.ci_high] and c["p"] == want.p
    assert c["se"] == want.se and c["auc"] == want.auc
    assert methods["CoLLM-MF"]["splits"]["test"] == {"auc": 0.7, "uauc": 0.6, "rows": 280}
    assert methods["CoLLM-MF"]["paper_auc"] == 0.7028
    assert methods["CoLLM-MF"]["paper_delta_auc"] == 0.7028 - 0.7361 and methods["CoLLM-MF"]["paper_order_here"] == "holds"
    same = methods["CoRA-MF [cora-again]"]["vs_reference"]
    assert (same["delta_auc"], same["se"], same["ci95"], same["p"]) == (0.0, 0.0, [0.0, 0.0], 1.0)
    assert methods["MF [cora]"]["vs_reference"] is None
    assert "no test rows of MF" in methods["MF [cora]"]["vs_reference_note"]

    # --versus picks another reference, named in the section; the difference changes sign
    out2 = tmp_path / "report2"
    main(["report", *runs, "--out", str(out2), "--versus", "CoLLM-MF"])
    section, rows = _paired_rows((out2 / "report.md").read_text())
    assert "Reference method: **CoLLM-MF**" in section and "chosen with `--versus CoLLM-MF`" in section
    assert rows["CoRA-MF [cora]"][4] == f"{-want.delta:+.4f}"
    assert rows["CoRA-MF [cora]"][7:9] == ["+0.0333", "holds"]
    assert json.loads((out2 / "report.json").read_text())["reference"]["label"] == "CoLLM-MF"


@pytest.mark.parametrize("paper_d,ci95,verdict", [
    (-0.03, (-0.05, -0.01), "holds"), (0.03, (0.01, 0.05), "holds"), (-0.03, (0.01, 0.05), "reversed"),
    (0.03, (-0.05, -0.01), "reversed"), (-0.03, (-0.05, 0.01), "not resolved"), (0.03, (0.0, 0.05), "not resolved"),
    (None, (-0.05, -0.01), "–"), (0.0, (-0.05, -0.01), "–"), (0.03, (float("nan"), float("nan")), "–")])
def test_paper_ordering(paper_d, ci95, verdict):
    assert paper_ordering(paper_d, ci95) == verdict


def test_report_paired_without_scores(inputs, tmp_path, capsys):
    """Results files without scores.jsonl: a note, no error; --versus naming no input is a one-line error."""
    out = tmp_path / "report"
    main(["report", *inputs, "--out", str(out)])
    section, _ = _paired_rows((out / "report.md").read_text())
    assert "No paired comparison: CoRA-MF [cora-qkvo] has no per-row test scores (no scores.jsonl" in section
    rep = json.loads((out / "report.json").read_text())
    assert rep["reference"]["label"] is None and all(m["vs_reference"] is None for m in rep["methods"])
    main(["report", *inputs[:2], "--out", str(out)])  # no CoRA-MF at all
    assert "No paired comparison: no input is labelled or named CoRA-MF" in (out / "report.md").read_text()
    bad = tmp_path / "bad"
    assert re.search(r"--versus SASRec: no input is labelled or named SASRec", error_line(capsys, main, ["report", *inputs, "--out", str(bad), "--versus", "SASRec"]))
    assert re.search(r"--versus MF: MF \[cf-mf\] has no per-row test scores", error_line(capsys, main, ["report", *inputs, "--out", str(bad), "--versus", "MF"]))
    assert not bad.exists()


def test_report_paired_refuses_unpaired_rows(tmp_path, capsys):
    y = np.array([0, 1, 0, 1, 1, 0])
    s = np.linspace(0, 1, 6)
    ref = _scored_run(tmp_path, "cora", "CoRA-MF", np.arange(6), np.arange(6), y, s)
    out = tmp_path / "report"
    disjoint = _scored_run(tmp_path, "other", "TALLRec", np.arange(6), np.arange(6) + 100, y, s)
    assert re.search(r"scored no test row in common \(rows matched by uid, iid\)$", error_line(capsys, main, ["report", ref, disjoint, "--out", str(out)]))
    flipped = _scored_run(tmp_path, "flipped", "TALLRec", np.arange(6), np.arange(6), 1 - y, s)
    assert re.search(r"field 'label' differs on 6 of the 6 test rows both scored", error_line(capsys, main, ["report", ref, flipped, "--out", str(out)]))
    twice = _scored_run(tmp_path, "twice", "TALLRec", np.zeros(6), np.r_[0, 0, 1, 2, 3, 4], y, s)
    assert re.search(r"TALLRec scored the test row uid 0, iid 0 more than once", error_line(capsys, main, ["report", ref, twice, "--out", str(out)]))
    (tmp_path / "twice" / "scores.jsonl").write_text('{"model": "TALLRec", "split": "test", "uid": 1}\n')
    assert re.search(r"twice/scores.jsonl:1: no 'iid' field$", error_line(capsys, main, ["report", ref, twice, "--out", str(out)]))
    assert not out.exists()
