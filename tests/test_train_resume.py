"""Exact resume after a real SIGKILL, config-mismatch refusal, and eval.py on the finished run.

A tiny random Llama (HF dir through cora_jax.llm's loader), a row subset of ML-100K and a tiny MF
keep every subprocess run to seconds of compute.
"""
import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cora_jax.cf import CFTrainConfig, train_cf
from cora_jax.data import PromptConfig, load_dataset, split_prompts
from cora_jax.train import ConfigMismatchError, RunCheckpoints, TrainConfig, from_dict, train
from cora_jax.train.tiny import tiny_dataset, tiny_llm_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_STEPS = 40


@pytest.fixture(scope="module")
def fixture_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = tiny_dataset(root / "data")
    ds = load_dataset(data)
    texts = [p for s in ("train", "valid", "test") for p in split_prompts(ds, ds[s], PromptConfig(domain=ds.domain, max_titles=3))]
    llm = tiny_llm_dir(root / "llm", texts)
    train_cf(CFTrainConfig(dim=8, max_epochs=2, progress=False), str(data), root / "cf")
    return root, data, llm, root / "cf"


def _args(data, llm, cf, out) -> list[str]:
    return [
        sys.executable, str(ROOT / "train.py"), "cora", "--preset", "demo-ml100k", "--data", str(data), "--llm", str(llm),
        "--cf", str(cf), "--out", str(out), "--model.generator.num-layers", "2", "--model.generator.hidden", "16",
        "--model.generator.num-heads", "2", "--model.generator.ffn-dim", "32", "--model.rank", "4", "--model.alpha", "8",
        "--optim.lr", "1e-2", "--optim.warmup-steps", "3", "--optim.decay-steps", "60", "--batch-size", "4",
        "--eval-batch-size", "16", "--eval-every", "4", "--patience", "100", "--max-steps", str(MAX_STEPS),
        "--max-titles", "3", "--length-bucket", "256", "--valid-limit", "None", "--max-wall-minutes", "None", "--no-progress",
        "--mesh.fsdp", "1",  # one of the 8 simulated devices (tests/test_sharding.py trains on meshes)
    ]


def _load_train_cli():
    spec = importlib.util.spec_from_file_location("train_cli", ROOT / "train.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _evals(out: pathlib.Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("event") == "eval"]


def _params(run: pathlib.Path, step: int) -> dict:
    mgr = ocp.CheckpointManager(run / "checkpoints")
    state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    mgr.close()
    return state["params"]


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flat(v, f"{prefix}/{k}")
    else:
        yield prefix, np.asarray(tree)


@pytest.fixture(scope="module")
def runs(fixture_dirs):
    root, data, llm, cf = fixture_dirs
    # A persistent compilation cache: the subprocesses reuse the executables the first run compiled
    # (compiling dominates these tiny runs on a shared CPU). Same executables -> same numerics.
    cache = root / "jax-cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_COMPILATION_CACHE_DIR": str(cache),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    # the uninterrupted reference runs in this process (same CLI parsing, same compiled code)
    old = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                                                 "jax_persistent_cache_min_entry_size_bytes")}
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:
        _load_train_cli().main_cora(_args(data, llm, cf, root / "full")[3:])
    finally:
        for k, v in old.items():
            jax.config.update(k, v)

    killed_out = root / "killed"
    proc = subprocess.Popen(_args(data, llm, cf, killed_out), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if any(r["step"] >= 12 for r in _evals(killed_out)):
            os.kill(proc.pid, signal.SIGKILL)  # a real kill: no cleanup, possibly mid-checkpoint
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed midway (rc {proc.returncode})"
    killed_at = max(r["step"] for r in _evals(killed_out))
    assert killed_at < MAX_STEPS

    resumed = subprocess.run(_args(data, llm, cf, killed_out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return root, None, resumed, killed_at


def test_sigkill_then_resume_ends_like_the_uninterrupted_run(runs):
    root, full, resumed, killed_at = runs
    assert "resuming from step" in resumed.stdout
    resumed_from = int(resumed.stdout.split("resuming from step ")[1].split()[0])
    assert 0 < resumed_from <= killed_at
    s_full = json.loads((root / "full" / "summary.json").read_text())
    s_res = json.loads((root / "killed" / "summary.json").read_text())
    assert s_full["steps"] == s_res["steps"] == MAX_STEPS
    assert s_full["best_step"] == s_res["best_step"]
    assert abs(s_full["best_valid_auc"] - s_res["best_valid_auc"]) <= 1e-6
    assert abs(s_full["last_valid_auc"] - s_res["last_valid_auc"]) <= 1e-6
    # the same trained parameters in the latest and in the best checkpoint
    for step in sorted({MAX_STEPS, s_full["best_step"]}):
        a, b = dict(_flat(_params(root / "full", step))), dict(_flat(_params(root / "killed", step)))
        assert a.keys() == b.keys() and any("/p/" in k for k in a)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)
    assert any(np.any(v != 0) for k, v in _flat(_params(root / "full", MAX_STEPS)) if "/p/" in k)  # P really trained
    # the valid AUCs logged after the resume equal the uninterrupted run's at the same steps
    full_auc = {r["step"]: r["valid_auc"] for r in _evals(root / "full")}
    for r in _evals(root / "killed"):
        assert abs(r["valid_auc"] - full_auc[r["step"]]) <= 1e-6


def test_finished_run_is_not_retrained_and_other_config_is_refused(runs):
    root = runs[0]
    cfg = from_dict(TrainConfig, json.loads((root / "full" / "config.json").read_text()))
    assert train(cfg)["steps"] == MAX_STEPS  # finished: returns the summary, trains nothing
    other = cfg.__class__(**{**cfg.__dict__, "model": cfg.model.__class__(**{**cfg.model.__dict__, "rank": 8})})
    with pytest.raises(ConfigMismatchError, match=r"model.rank: 4 \(checkpoint\) vs 8 \(requested\)"):
        train(other)
    ckpt = RunCheckpoints(root / "full")
    steps = ckpt.manager.all_steps()
    ckpt.close()
    assert MAX_STEPS in steps and len(steps) <= 2  # latest + best only


def test_eval_cli_writes_results_table_and_scores(runs):
    root = runs[0]
    spec = importlib.util.spec_from_file_location("eval_cli", ROOT / "eval.py")
    eval_cli = importlib.util.module_from_spec(spec)
    sys.modules["eval_cli"] = eval_cli  # dataclasses look their module up there
    spec.loader.exec_module(eval_cli)
    out = root / "eval-out"
    eval_cli.main(["--run", str(root / "full"), "--split", "test", "--limit", "20", "--out", str(out), "--no-progress"])
    results = json.loads((out / "results.json").read_text())
    ours = results["models"]["CoRA-MF"]
    assert ours["test"]["rows"] == 20 and ours["test_warm"]["rows"] + ours["test_cold"]["rows"] == 20
    assert "MF (CF, same rows)" in results["models"] and results["paper"]["rows"]["CoRA-MF"] == [0.7361, 0.6884]
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and set(rows[0]) >= {"uid", "iid", "label", "score"}
    table = (out / "results.md").read_text()
    assert "| CoRA-MF | test | 20 |" in table and "users)" in table
