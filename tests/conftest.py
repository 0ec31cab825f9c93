"""Test-wide setup: 8 simulated CPU devices, so sharding tests run without accelerators, a persistent
compilation cache, and the tiny inputs the end-to-end tests share.

The flag must be set before jax is imported anywhere, hence here.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import TYPE_CHECKING

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

if TYPE_CHECKING:
    from cora_jax.data import Dataset
    from cora_jax.train import TrainConfig


def pytest_configure(config):
    """JAX's persistent compilation cache in pytest's cache folder (.pytest_cache, git-ignored; --cache-clear
    empties it), for this process and the Python subprocesses tests start: a second run loads the executables
    the first compiled, every one however quick (compiling is most of this suite's time)."""
    if hasattr(config, "cache"):  # not under -p no:cacheprovider
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(config.cache.mkdir("jax-compilation-cache")))
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
ML1M_DIR = pathlib.Path(os.environ.get("CORA_DATA", SHARED / "data")) / "ml-1m-collm"  # as configs/cora.py reads it


@pytest.fixture(scope="session")
def ml1m_dir() -> pathlib.Path:
    """The paper's ML-1M split ($CORA_DATA, else ../shared/data); tests that need it skip when it is absent."""
    if not (ML1M_DIR / "test.jsonl.gz").exists():
        pytest.skip(f"the shared ML-1M split is not at {ML1M_DIR} (CI has ../shared beside the clone)")
    return ML1M_DIR


@dataclasses.dataclass(frozen=True)
class TinyWorld:
    """ML-100K's first rows (tiny_dataset's defaults), a 1-epoch MF of dim 8 on them, a random tiny LLM whose
    tokenizer was trained on `texts`, and `base`, a 3-step training config of the three on one device.
    Read-only: tests write their runs into folders of their own."""
    data: pathlib.Path
    ds: Dataset
    cf: pathlib.Path
    llm: pathlib.Path
    texts: list[str]
    base: TrainConfig


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """tiny_world(*templates): the TinyWorld whose LLM's tokenizer saw the train split's prompts in these
    templates, in this order; each is built once a session, on the same data and MF checkpoint."""
    from cora_jax.cf import CFTrainConfig, train_cf
    from cora_jax.data import PromptConfig, load_dataset, split_prompts
    from cora_jax.train import TrainConfig
    from cora_jax.train.mesh import MeshConfig
    from cora_jax.train.tiny import tiny_dataset, tiny_llm_dir

    root = tmp_path_factory.mktemp("tiny-world")
    data = tiny_dataset(root / "data")
    ds = load_dataset(data)
    cf = root / "cf"
    train_cf(CFTrainConfig(dim=8, max_epochs=1, progress=False), str(data), cf)
    worlds = {}

    def get(*templates: str) -> TinyWorld:
        if templates not in worlds:
            texts = [p for template in templates for p in split_prompts(
                ds, ds["train"], PromptConfig(domain=ds.domain, max_titles=3, template=template))]
            llm = tiny_llm_dir(root / "-".join(("llm", *templates)), texts)
            base = TrainConfig(data=str(data), llm=str(llm), cf=str(cf), max_titles=3, batch_size=4, eval_batch_size=8,
                               max_steps=3, eval_every=3, progress=False, calibrate_rows=8, async_checkpoint=False,
                               mesh=MeshConfig(fsdp=1), length_bucket=256,
                               optim=dataclasses.replace(TrainConfig().optim, warmup_steps=1, decay_steps=4))
            worlds[templates] = TinyWorld(data, ds, cf, llm, texts, base)
        return worlds[templates]

    return get
