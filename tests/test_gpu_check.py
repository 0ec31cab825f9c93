"""bench/gpu_check.sh --dry-run: the GPU day's whole sequence (bench_train twice, the memory estimate,
a CoRA-MF run, test-split scoring, the summary table) on the CPU with tiny inputs, so the script
cannot rot before a GPU is lent."""
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_completes_every_step(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as on a plain machine
    env["PYTHON"] = sys.executable
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "check")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (tmp_path / "check" / "summary.md").read_text()
    assert "FAILED" not in table and "not run" not in table, table
    for row in ("bench_train SmolLM2", "bench_train Vicuna-7B shape", "memory, 7B shape", "CoRA-MF training",
                "test split scoring"):
        assert f"| {row} |" in table
    assert "2 steps in" in table and "16 rows in" in table
