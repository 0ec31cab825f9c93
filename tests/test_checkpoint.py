"""RunCheckpoints on small pytrees (no training): the params / opt_state / meta items, runs of the
older single-`state` layout, damaged files named in one line without Orbax's noise, pruning after a
reopen, and a save refused before writing when the disk cannot hold it.
"""
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cora_jax.train import checkpoint as C

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _trees(seed: float = 0.0):
    params = {"a": jnp.arange(1000.0) + seed, "b": {"c": jnp.full((50, 50), seed)}}
    resume = {"opt": [jnp.zeros(1000) + seed, jnp.ones((50, 50))], "rng": np.array([1, 2], np.uint32)}
    return params, resume


def _save(run: pathlib.Path, aucs: dict[int, float]) -> None:
    ckpt = C.RunCheckpoints(run)
    for step, auc in aucs.items():
        ckpt.save(step, *_trees(step), {"step": step}, auc)
    ckpt.close()


def _files(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _largest_data_file(item: pathlib.Path) -> pathlib.Path:
    return max((p for p in item.rglob("d/*") if p.is_file()), key=lambda p: p.stat().st_size)


def _error(fn) -> str:
    with pytest.raises(C.CheckpointReadError) as err:
        fn()
    return str(err.value)


def test_items_and_params_only_restore(tmp_path):
    _save(tmp_path, {1: 0.6})
    assert {p.name for p in (tmp_path / "checkpoints" / "1").iterdir() if p.is_dir()} >= {"params", "opt_state", "meta"}
    ckpt = C.RunCheckpoints(tmp_path, writable=False)
    params, resume = _trees(1)
    got_params, got_resume, meta = ckpt.restore(1, params, resume)
    np.testing.assert_array_equal(got_params["b"]["c"], params["b"]["c"])
    np.testing.assert_array_equal(got_resume["opt"][0], resume["opt"][0])
    assert meta == {"step": 1}
    # the optimiser item gone: a parameters-only restore does not notice, a resume does
    C.shutil.rmtree(tmp_path / "checkpoints" / "1" / "opt_state")
    np.testing.assert_array_equal(ckpt.restore_params(1, params)["a"], params["a"])
    with pytest.raises(C.CheckpointReadError, match=r"checkpoint step 1 is unreadable \(.*/1/opt_state: missing\)"):
        ckpt.restore(1, params, resume)
    ckpt.close()


def test_runs_of_the_single_state_layout_are_still_read(tmp_path):
    params, resume = _trees(3)
    mgr = ocp.CheckpointManager(tmp_path / "checkpoints")
    mgr.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params, **resume}),
                                        meta=ocp.args.JsonSave({"step": 3})))
    mgr.close()
    ckpt = C.RunCheckpoints(tmp_path, writable=False)
    np.testing.assert_array_equal(ckpt.restore_params(3, params)["a"], params["a"])
    got_params, got_resume, meta = ckpt.restore(3, params, resume)
    np.testing.assert_array_equal(got_params["a"], params["a"])
    np.testing.assert_array_equal(got_resume["rng"], resume["rng"])
    assert meta == {"step": 3}
    ckpt.close()


def test_reopened_manager_still_prunes_to_latest_and_best(tmp_path):
    _save(tmp_path, {1: 0.6, 2: 0.5})
    _save(tmp_path, {3: 0.55, 4: 0.52})  # a resume: another process, another manager
    assert C.RunCheckpoints(tmp_path, writable=False).steps() == [4, 1]


def test_damaged_files_are_named_in_one_line(tmp_path):
    _save(tmp_path, {1: 0.6, 2: 0.5})
    ckpt = C.RunCheckpoints(tmp_path, writable=False)
    params, resume = _trees(2)
    data = _largest_data_file(tmp_path / "checkpoints" / "2" / "params")
    full = data.read_bytes()
    data.write_bytes(full[: len(full) // 2])
    msg = f"checkpoint step 2 is unreadable ({data}: "
    assert _error(lambda: ckpt.verify(2)).startswith(f"{msg}truncated to {len(full) // 2} bytes, its index needs ")
    assert _error(lambda: ckpt.restore_params(2, params)) == _error(lambda: ckpt.verify(2))  # checked before reading
    data.write_bytes(bytes(len(full)))  # the right size, but not zstd: only Orbax's read finds it
    ckpt.verify(2)
    line = _error(lambda: ckpt.restore_params(2, params))
    assert line.startswith(msg) and "ZSTD" in line and "\n" not in line
    data.unlink()
    assert _error(lambda: ckpt.restore(2, params, resume)) == f"{msg}missing)"
    (tmp_path / "checkpoints" / "2" / "meta" / "metadata").write_text('{"st')
    with pytest.raises(C.CheckpointReadError, match=r"step 2 is unreadable \(.*/2/meta: JSONDecodeError: Unterminated"):
        ckpt.read_meta(2)
    # the newest intact step, and the errors of those skipped
    step, meta, skipped = ckpt.newest_intact(lambda s: (ckpt.verify(s), ckpt.read_meta(s))[1])
    assert (step, meta, [e.step for e in skipped]) == (1, {"step": 1}, [2])
    _largest_data_file(tmp_path / "checkpoints" / "1" / "opt_state").unlink()
    with pytest.raises(C.NoIntactCheckpointError, match=r"step 2 is unreadable .*; checkpoint step 1 is unreadable "
                                                        r".*: start over with a new --out folder, or move "):
        ckpt.newest_intact(lambda s: ckpt.restore(s, params, resume))
    ckpt.close()


def test_a_failed_read_prints_no_orbax_noise(tmp_path):
    """Orbax's remaining reads of a corrupt checkpoint end on a closed event loop, often printing a
    traceback each (timing decides: hence three reads); the process that reported the error prints
    nothing else."""
    script = f"""
import pathlib, numpy as np, jax.numpy as jnp
from cora_jax.train import checkpoint as C
run = pathlib.Path({str(tmp_path)!r})
params = {{f"w{{i}}": jnp.asarray(np.random.default_rng(i).normal(size=2000), jnp.float32) for i in range(40)}}
ckpt = C.RunCheckpoints(run, async_save=False)
ckpt.save(1, params, {{"opt": jnp.zeros(3)}}, {{"step": 1}}, 0.5)
ckpt.close()
values = sorted((run / "checkpoints" / "1" / "params").glob("ocdbt.process_0/d/*"), key=lambda p: p.stat().st_size)
for data in values[-3:]:  # the arrays' data, zeroed: the index reads fine, the values do not decode
    data.write_bytes(bytes(data.stat().st_size))
for _ in range(3):
    try:
        C.RunCheckpoints(run, writable=False).restore_params(1, params)
    except C.CheckpointReadError as err:
        print(err)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("checkpoint step 1 is unreadable (") and "ZSTD" in lines[0]
    noise = [line for line in out.stderr.splitlines()
             if any(mark in line for mark in ("Traceback", "Event loop is closed", "never retrieved", "Exception ignored"))]
    assert not noise, out.stderr[-3000:]


def test_a_save_that_cannot_fit_is_refused_before_writing(tmp_path, monkeypatch):
    _save(tmp_path, {1: 0.6})
    before = _files(tmp_path)
    params, resume = _trees(2)
    need = sum(x.nbytes for x in jax.tree.leaves((params, resume)))
    monkeypatch.setattr(C, "free_space", lambda path: need)  # the arrays would fit, with no margin left
    ckpt = C.RunCheckpoints(tmp_path)
    with pytest.raises(C.DiskSpaceError) as err:
        ckpt.save(2, params, resume, {"step": 2}, 0.7)
    ckpt.close()
    line = str(err.value)
    assert line.startswith(f"not enough disk space to save checkpoint step 2 in {tmp_path / 'checkpoints'}: it needs about ")
    assert line.endswith("the checkpoints written so far (steps 1) are intact: free some space and rerun the same "
                         "command to resume") and "\n" not in line
    assert _files(tmp_path) == before
    assert json.loads((tmp_path / "checkpoints" / "1" / "metrics" / "metrics").read_text())["step"] == 1
