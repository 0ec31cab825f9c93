"""eval.py report: synthetic results files of each kind -> report.md, warm_cold.png and id_only.png."""
import json
import re

import pytest

from cora_jax.train.report import _short_run_names, load_results
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
    _write(zs / "results.json", {"kind": "zero_shot", "data": "ml-1m-collm", "llm": "TinyLLM",
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


def test_report_bad_path(inputs, tmp_path):
    out = tmp_path / "report"
    for bad in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(SystemExit, match=re.escape(f"{bad}: expected a CoRA run dir")):
            main(["report", inputs[0], str(bad), "--out", str(out)])
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


def test_run_names_are_the_shortest_folder_suffixes_that_differ():
    names = _short_run_names(["runs/a/eval/results.json", "runs/a/eval-full/results.json", "x/b/results.json",
                              "y/b/results.json", "y/b/results.json"])
    assert names == {"runs/a/eval/results.json": "a", "runs/a/eval-full/results.json": "a/eval-full",
                     "x/b/results.json": "x/b", "y/b/results.json": "y/b"}
    assert _short_run_names(["runs/a/eval/results.json", "x/a/eval/results.json"]) == {
        "runs/a/eval/results.json": "runs/a", "x/a/eval/results.json": "x/a"}
    assert _short_run_names(["runs/cf/mf/results.json", "runs/cora/eval/results.json"]) == {
        "runs/cf/mf/results.json": "mf", "runs/cora/eval/results.json": "cora"}
