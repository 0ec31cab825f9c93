"""eval.py seeds: grouping by setting, per-seed rows, mean / sd, and the paired test between settings."""
import gzip
import json

import numpy as np
import pytest

from cora_jax.metrics import delong_paired
from cora_jax.run_files import ReportError
from cora_jax.train.seed_study import load_run, main, summarize

N = 200


def _run(root, name, seed, bucket, score, label, curve, cf_auc=0.6):
    """The files results/seed_study.sh keeps of one run, scores gzipped as committed."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"seed": seed, "out": f"runs/{name}", "bucket_train": bucket,
                                               "optim": {"lr": 1e-3}}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in [{"event": "start", "step": 0}] + [
        {"event": "eval", "step": s, "valid_auc": a} for s, a in curve]))
    test_auc = delong_paired(label, score, score).auc
    (d / "results.json").write_text(json.dumps({"kind": "cora", "data": "d", "llm": "L", "models": {
        "CoRA-MF": {"test": {"auc": test_auc, "uauc": 0.6, "rows": N}},
        "MF (CF, same rows)": {"test": {"auc": cf_auc, "uauc": 0.5, "rows": N}}}}))
    rows = [{"model": "CoRA-MF", "split": "test", "uid": k // 4, "iid": k, "label": int(y), "score": float(s)}
            for k, (y, s) in enumerate(zip(label, score))]
    with gzip.open(d / "scores.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    return str(d), test_auc


def test_seed_study_groups_settings_and_pairs_them_by_seed(tmp_path):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, N)
    dirs, aucs = [], {}
    for seed in (1, 2, 3):
        for bucket in (False, True):
            score = label * (0.5 + 0.5 * bucket) + rng.normal(size=N)
            d, auc = _run(tmp_path, f"{bucket}-{seed}", seed, bucket, score, label, [(40, 0.6), (80, 0.7 + seed / 100)])
            dirs.append(d)
            aucs[(bucket, seed)] = (auc, score)
    summary = summarize([load_run(d) for d in dirs])
    names = [s["setting"] for s in summary["settings"]]
    assert names == ["bucket_train=False", "bucket_train=True"]  # only the differing field names a setting
    uniform = summary["settings"][0]
    expected = [aucs[(False, s)][0] for s in (1, 2, 3)]
    assert [x["test_auc"] for x in uniform["runs"]] == pytest.approx(expected)
    assert uniform["test_auc_mean"] == pytest.approx(np.mean(expected))
    assert uniform["test_auc_sd"] == pytest.approx(np.std(expected, ddof=1))
    assert [x["best_step"] for x in uniform["runs"]] == [80, 80, 80]
    assert uniform["seeds_above_cf"] == sum(a > 0.6 for a in expected)
    # Paired rows: the bucketed run of each seed against the uniform run of the same seed, on the same rows.
    assert [(p["setting"], p["seed"]) for p in summary["paired"]] == [("bucket_train=True", s) for s in (1, 2, 3)]
    for p in summary["paired"]:
        t = delong_paired(label, aucs[(True, p["seed"])][1], aucs[(False, p["seed"])][1])
        assert p["delta_auc"] == pytest.approx(t.delta) and p["p"] == pytest.approx(t.p) and p["rows"] == N

    out = tmp_path / "out"
    main([*dirs, "--out", str(out)])
    md = (out / "seeds.md").read_text()
    assert "| bucket_train=False | 1 | 0.600@40 0.710@80 | 80 |" in md
    assert json.loads((out / "seeds.json").read_text())["paired"][0]["seed"] == 1
    assert (out / "valid_curves.png").stat().st_size > 0


def test_seed_study_refuses_incomplete_folders_and_repeated_seeds(tmp_path):
    label = np.arange(N) % 2
    a, _ = _run(tmp_path, "a", 1, False, label * 1.0, label, [(40, 0.6)])
    b, _ = _run(tmp_path, "b", 1, False, label * 1.0, label, [(40, 0.6)])
    with pytest.raises(ReportError, match="seed 1 occurs twice"):
        summarize([load_run(a), load_run(b)])
    (tmp_path / "b" / "metrics.jsonl").unlink()
    with pytest.raises(ReportError, match="no metrics.jsonl"):
        load_run(b)
