"""Exact resume after a real SIGKILL (also one during an asynchronous save), config-mismatch refusal,
eval.py on the finished run (which reads no optimiser state), damaged checkpoints (resume falls back
to an intact one, evaluation names the file), and a checkpoint the disk cannot hold.

A tiny random Llama (HF dir through cora_jax.llm's loader), a row subset of ML-100K and a tiny MF
keep every subprocess run to seconds of compute.
"""
import importlib.util
import json
import os
import pathlib
import re
import shutil
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
from cora_jax.train import checkpoint as C
from cli_helpers import error_line
from cora_jax.train.tiny import tiny_dataset, tiny_llm_dir

pytestmark = pytest.mark.slow  # training runs, killed and resumed in subprocesses

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


def _load_eval_cli():
    spec = importlib.util.spec_from_file_location("eval_cli", ROOT / "eval.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["eval_cli"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _cache(root: pathlib.Path) -> str:
    """The persistent compilation cache of the runs: the session's (tests/conftest.py), else one of their own."""
    return jax.config.jax_compilation_cache_dir or str(root / "jax-cache")


def _env(root: pathlib.Path) -> dict:
    """The subprocesses' environment: the persistent compilation cache, so that they reuse the executables
    the first run compiled (compiling dominates these tiny runs on a shared CPU; same executables ->
    same numerics)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_COMPILATION_CACHE_DIR": _cache(root),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _evals(out: pathlib.Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("event") == "eval"]


def _params(run: pathlib.Path, step: int) -> dict:
    mgr = ocp.CheckpointManager(run / "checkpoints")
    params = mgr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))["params"]
    mgr.close()
    return params


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flat(v, f"{prefix}/{k}")
    else:
        yield prefix, np.asarray(tree)


@pytest.fixture(scope="module")
def runs(fixture_dirs):
    root, data, llm, cf = fixture_dirs
    cache, env = _cache(root), _env(root)
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
    eval_cli = _load_eval_cli()
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


def _assert_ends_like_the_full_run(root: pathlib.Path, run: pathlib.Path) -> None:
    """run ended like the uninterrupted one: same summary, the same trained parameters in the latest and
    the best checkpoint, the same valid AUC at every evaluation it logged; and only those two kept."""
    s_full, s_run = (json.loads((r / "summary.json").read_text()) for r in (root / "full", run))
    assert s_run["steps"] == s_full["steps"] == MAX_STEPS and s_run["best_step"] == s_full["best_step"]
    assert abs(s_full["last_valid_auc"] - s_run["last_valid_auc"]) <= 1e-6
    for step in sorted({MAX_STEPS, s_full["best_step"]}):
        a, b = dict(_flat(_params(root / "full", step))), dict(_flat(_params(run, step)))
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)
    full_auc = {r["step"]: r["valid_auc"] for r in _evals(root / "full")}
    assert all(abs(r["valid_auc"] - full_auc[r["step"]]) <= 1e-6 for r in _evals(run))
    ckpt = RunCheckpoints(run, writable=False)
    assert ckpt.steps() == sorted({MAX_STEPS, s_full["best_step"]}, reverse=True)  # pruned, after resuming too
    ckpt.close()


def _truncate_params_files(run: pathlib.Path, step: int) -> set[str]:
    """Cut every data file of step's parameters to 10 bytes (a file can hold bytes its index no longer
    refers to: cutting one alone may leave the checkpoint readable); returns their paths."""
    files = {str(p) for p in (run / "checkpoints" / str(step) / "params").rglob("d/*") if p.is_file()}
    for file in files:
        pathlib.Path(file).write_bytes(pathlib.Path(file).read_bytes()[:10])
    return files


def _named_file(line: str, pattern: str, files: set[str]) -> None:
    """line matches pattern, whose group `file` is one of files."""
    match = re.fullmatch(pattern, line)
    assert match and match["file"] in files, line


def test_evaluation_reads_no_optimiser_state(runs, tmp_path):
    """The finished run without its optimiser items scores exactly as with them."""
    root = runs[0]
    run = tmp_path / "without-opt-state"
    shutil.copytree(root / "full", run)
    opt_items = list(run.glob("checkpoints/*/opt_state"))
    assert len(opt_items) == len(list(run.glob("checkpoints/*/params"))) >= 1
    for item in opt_items:
        shutil.rmtree(item)
    args = ["--split", "test", "--limit", "20", "--no-progress"]
    eval_cli = _load_eval_cli()
    eval_cli.main(["--run", str(root / "full"), *args, "--out", str(tmp_path / "with")])
    eval_cli.main(["--run", str(run), *args, "--out", str(tmp_path / "without")])
    scores = [(tmp_path / out / "scores.jsonl").read_text() for out in ("with", "without")]
    assert scores[0] == scores[1] and len(scores[0].splitlines()) == 20


# Run in a child instead of train.py: Orbax's background work stalls, after writing MARKER, either
# writing the meta item of step STEP's save ("save": the step is not committed, its arrays may be
# written) or deleting the first step the latest + best policy prunes ("prune": that step and the
# newer one that replaced it are both complete). Arguments: save|prune STEP MARKER train.py ARGS...
STALLED = """
import pathlib, runpy, sys, time
import orbax.checkpoint as ocp
from orbax.checkpoint._src.path import deleter
what, step, marker = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3])
def stall(note):
    marker.write_text(note)
    time.sleep(600)
save = ocp.handlers.JsonCheckpointHandler._save_fn
async def stalled_save(self, x, directory):
    if what == "save" and isinstance(x, dict) and "config" in x and x["step"] == step:  # the run's meta, not Orbax's metrics
        stall(str(directory))
    return await save(self, x, directory)
delete = deleter.StandardCheckpointDeleter.delete
def stalled_delete(self, s):
    if what == "prune":
        stall(str(s))
    return delete(self, s)
ocp.handlers.JsonCheckpointHandler._save_fn = stalled_save
deleter.StandardCheckpointDeleter.delete = stalled_delete
sys.argv = sys.argv[4:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _kill_when_stalled(root: pathlib.Path, argv: list[str], what: str, step: int = 0) -> str:
    """Run train.py argv in a child that stalls (see STALLED) and SIGKILL it there; returns MARKER's text."""
    marker = root / f"stalled-{what}-{step}"
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", STALLED, what, str(step), str(marker), *argv[1:]], cwd=ROOT,
                            env=_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not marker.exists():
        time.sleep(0.02)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    out = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL and marker.exists(), out[-3000:]
    return marker.read_text()


def test_truncated_checkpoint_resume_falls_back_and_evaluation_names_it(runs, fixture_dirs, capsys):
    root, data, llm, cf = fixture_dirs
    run = root / "damaged"
    # killed while pruning: two complete checkpoints, as when the best is not the latest
    pruned = int(_kill_when_stalled(root, _args(data, llm, cf, run), "prune"))
    ckpt = RunCheckpoints(run, writable=False)
    steps = ckpt.steps()
    ckpt.close()
    assert len(steps) >= 2 and pruned in steps
    files = _truncate_params_files(run, steps[0])

    # resume: the latest checkpoint is unreadable -> resumed from the next one, said on stderr
    resumed = subprocess.run(_args(data, llm, cf, run), cwd=ROOT, env=_env(root), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    aside = run / "unreadable-checkpoints" / str(steps[0])
    said = [line for line in resumed.stderr.splitlines() if line.startswith("checkpoint step")]
    assert len(said) == 1, resumed.stderr[-3000:]
    _named_file(said[0], rf"checkpoint step {steps[0]} is unreadable \((?P<file>.+): truncated to 10 bytes, its index "
                         rf"needs \d+ bytes\); resuming from step {steps[1]} \(moved to {re.escape(str(aside))}\)", files)
    assert f"resuming from step {steps[1]} " in resumed.stdout
    assert (aside / "params").is_dir()  # kept for inspection, out of the checkpoint manager's way
    _assert_ends_like_the_full_run(root, run)

    # evaluation of a run whose best checkpoint is unreadable: one line naming the step and the file
    best = json.loads((run / "summary.json").read_text())["best_step"]
    files = _truncate_params_files(run, best)
    line = error_line(capsys, _load_eval_cli().main, ["--run", str(run), "--split", "test", "--limit", "4", "--no-progress"])
    _named_file(line, rf"error: checkpoint step {best} is unreadable \((?P<file>.+): truncated to 10 bytes, its index "
                      rf"needs \d+ bytes\)", files)

    # no intact checkpoint left: resuming stops before loading anything, saying how to start over
    for step in {MAX_STEPS, best} - {best}:
        _truncate_params_files(run, step)
    line = error_line(capsys, _load_train_cli().main, _args(data, llm, cf, run)[2:])
    assert line.startswith(f"error: no checkpoint of {run} can be read (checkpoint step {MAX_STEPS} is unreadable (")
    assert f"checkpoint step {best} is unreadable (" in line
    assert line.endswith(f": start over with a new --out folder, or move {run / 'checkpoints'} away and rerun the same command")


STALL_AT = 12


def test_sigkill_during_an_async_save_then_resume_ends_like_the_uninterrupted_run(runs, fixture_dirs):
    root, data, llm, cf = fixture_dirs
    run = root / "killed-in-save"
    _kill_when_stalled(root, _args(data, llm, cf, run), "save", STALL_AT)
    # killed with step STALL_AT's save under way: its temporary folder is there, the step is not
    assert any(p.name.startswith(f"{STALL_AT}.") for p in (run / "checkpoints").iterdir())
    ckpt = RunCheckpoints(run, writable=False)
    assert STALL_AT not in ckpt.steps() and max(ckpt.steps()) == STALL_AT - 4
    ckpt.close()

    resumed = subprocess.run(_args(data, llm, cf, run), cwd=ROOT, env=_env(root), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {STALL_AT - 4} " in resumed.stdout
    assert not any(p.name.startswith(f"{STALL_AT}.") for p in (run / "checkpoints").iterdir())  # cleared
    _assert_ends_like_the_full_run(root, run)


def test_a_checkpoint_the_disk_cannot_hold_stops_cleanly(fixture_dirs, monkeypatch, capsys):
    """Free space for the first checkpoint only: the second is refused before a byte is written, in one
    line, and the first stays as it was."""
    root, data, llm, cf = fixture_dirs
    run = root / "disk-full"
    sizes = iter([1 << 50])
    monkeypatch.setattr(C, "free_space", lambda path: next(sizes, 0))
    argv = _args(data, llm, cf, run)[2:]
    argv[argv.index("--max-steps") + 1] = "8"
    line = error_line(capsys, _load_train_cli().main, argv)
    assert line.startswith(f"error: not enough disk space to save checkpoint step 8 in {run / 'checkpoints'}: it needs about ")
    assert line.endswith("MiB are free; the checkpoints written so far (steps 4) are intact: free some space and "
                         "rerun the same command to resume")
    ckpt = RunCheckpoints(run, writable=False)
    assert ckpt.steps() == [4] and ckpt.read_meta(4)["step"] == 4
    ckpt.verify(4)
    ckpt.close()
    assert [r["step"] for r in _evals(run)] == [4]
