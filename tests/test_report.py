"""eval.py report: synthetic results files of each kind -> report.md and warm_cold.png."""
import json
import re

import pytest

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
    cf_row = rows[f"MF [{tmp_path / 'cf-mf' / 'results.json'}]"]
    assert "| 0.6437 | 0.6000 | 0.7220 | 0.4799 | 0.6486 | 0.6396 | 7331 |" in cf_row
    assert "| 0.5123 | 0.5011 | – | – | 0.5119 | 0.5178 | 2000 | ml-1m-collm | TinyLLM |" in rows["ICL"]
    cora = [line for line in md.splitlines() if line.startswith("| CoRA-MF [")]
    assert len(cora) == 2 and "| 0.7012 | 0.6111 | 0.7112 | 0.6912 | 0.7361 | 0.6884 | 500 |" in md
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
