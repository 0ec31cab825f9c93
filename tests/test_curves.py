"""eval.py report's training curves: curves.png from the metrics.jsonl of run dirs and seed-study folders, read
by step (a resumed run's re-evaluations replace the earlier ones); no figure and no error when no input has one."""
import json
import math
import re

import pytest

from cora_jax.run_files import ReportError
from cora_jax.train.curves import load_curves
from cli_helpers import error_line
from eval import main


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _results(auc):
    m = {"auc": auc, "uauc": 0.6, "uauc_users": 10, "users": 20, "rows": 100}
    return {"kind": "cora", "data": "ml-1m-collm", "llm": "TinyLLM", "models": {"CoRA-MF": {"test": m}}}


def _events(*evals):
    """metrics.jsonl of evaluations (step, loss, auc) and other events (dicts), between a start and an end."""
    lines = [{"event": "start", "step": 0}]
    for e in evals:
        lines.append(e if isinstance(e, dict) else
                     {"event": "eval", "step": e[0], "valid_auc": e[2], "train_loss": e[1], "best_auc": e[2]})
    return "\n".join(map(json.dumps, lines + [{"event": "end"}])) + "\n"


@pytest.fixture
def inputs(tmp_path):
    run = tmp_path / "runs" / "cora-mf"  # a run dir: eval/results.json beside metrics.jsonl
    _write(run / "eval" / "results.json", _results(0.70))
    # steps 2 and 4 evaluated, then a restart retrained step 4 (its checkpoint was lost) and evaluated it again
    (run / "metrics.jsonl").write_text(_events((2, 0.69, 0.55), (4, 0.66, 0.58), {"event": "resume", "step": 2},
                                               (4, 0.65, 0.60)))
    seeds = tmp_path / "seeds" / "bucketed-s1"  # a seed-study folder: results.json beside metrics.jsonl
    _write(seeds / "results.json", _results(0.68))
    (seeds / "metrics.jsonl").write_text(_events((40, 0.7, 0.61), (80, None, 0.63)))
    cf = tmp_path / "cf-mf"  # a CF run: no training metrics
    _write(cf / "results.json", {"model": "mf", "data": "ml-1m-collm", "test": _results(0.6)["models"]["CoRA-MF"]["test"]})
    return [str(run), str(seeds), str(cf)]


def test_curves_of_every_input_with_metrics(inputs, tmp_path, capsys):
    curves = load_curves(inputs)
    assert [c["run"] for c in curves] == ["cora-mf", "bucketed-s1"]
    assert curves[0]["step"] == [2, 4] and curves[0]["train_loss"] == [0.69, 0.65] and curves[0]["valid_auc"] == [0.55, 0.60]
    assert curves[1]["step"] == [40, 80] and math.isnan(curves[1]["train_loss"][1])  # a missing loss is a gap
    out = tmp_path / "report"
    main(["report", *inputs, "--out", str(out)])
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / "report.md")
    png = (out / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert "![training loss and valid AUC against step](curves.png)" in (out / "report.md").read_text()


def test_no_curves_without_metrics(inputs, tmp_path):
    out = tmp_path / "report"
    main(["report", inputs[2], "--out", str(out)])
    assert (out / "report.md").is_file() and not (out / "curves.png").exists()
    assert "curves.png" not in (out / "report.md").read_text()


def test_unreadable_metrics_are_named(inputs, tmp_path, capsys):
    with open(f"{inputs[0]}/metrics.jsonl", "a") as f:
        f.write('{"event": "eval", "step"\n')
    with pytest.raises(ReportError, match=r"metrics.jsonl:7: not JSON"):
        load_curves(inputs)
    assert re.search(r"metrics.jsonl:7: not JSON", error_line(capsys, main, ["report", *inputs, "--out", str(tmp_path / "report")]))
