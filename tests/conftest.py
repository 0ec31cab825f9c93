"""Test-wide setup: 8 simulated CPU devices, so sharding tests run without accelerators.

The flag must be set before jax is imported anywhere, hence here.
"""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
ML1M_DIR = pathlib.Path(os.environ.get("CORA_DATA", SHARED / "data")) / "ml-1m-collm"  # as configs/cora.py reads it


@pytest.fixture(scope="session")
def ml1m_dir() -> pathlib.Path:
    """The paper's ML-1M split ($CORA_DATA, else ../shared/data); tests that need it skip when it is absent."""
    if not (ML1M_DIR / "test.jsonl.gz").exists():
        pytest.skip(f"the shared ML-1M split is not at {ML1M_DIR} (CI has ../shared beside the clone)")
    return ML1M_DIR
