"""The project's error types and the entry-point wrapper: one `error: ...` line and exit status 2 for
a request the user can fix, the traceback with --debug / CORA_DEBUG=1 and for bugs."""
import dataclasses
import pathlib
import subprocess
import sys

import pytest

from configs import UnknownPresetError
from cora_jax.assets import MissingAssetError
from cora_jax.cf.models import CFConfigError
from cora_jax.data import DataError
from cora_jax.errors import CoraError, FlagError, UsageError, entry_point
from cora_jax.llm.config import ConfigError
from cora_jax.llm.weights import WeightError
from cora_jax.train import TrainConfig
from cora_jax.train.checkpoint import CheckpointReadError, ConfigMismatchError, DiskSpaceError, NoIntactCheckpointError
from cora_jax.train.setup import SetupError
from cora_jax.train.mesh import MeshConfig
from cora_jax.run_files import ReportError

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cls, base", [
    (DataError, ValueError), (ConfigError, ValueError), (WeightError, ValueError), (MissingAssetError, FileNotFoundError),
    (CFConfigError, ValueError), (ReportError, ValueError), (SetupError, ValueError), (ConfigMismatchError, ValueError),
    (UnknownPresetError, KeyError), (FlagError, ValueError), (CheckpointReadError, OSError),
    (NoIntactCheckpointError, OSError), (DiskSpaceError, OSError),
])
def test_project_errors_share_one_base_and_keep_their_own(cls, base):
    assert issubclass(cls, CoraError) and issubclass(cls, base)


def _with(cfg, path: str, value):
    """cfg with the dotted field `path` replaced."""
    head, _, rest = path.partition(".")
    return dataclasses.replace(cfg, **{head: _with(getattr(cfg, head), rest, value) if rest else value})


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, "--batch-size must be >= 1, got 0"),
    ("llm_dtype", "int8", "--llm-dtype must be float32, bfloat16 or float16, got 'int8'"),
    ("model.targets", "qkvx", "--model.targets names an unknown preset 'qkvx'; choose one of"),
    ("model.generator.num_heads", 0, "--model.generator.num-heads must be >= 1, got 0"),
    ("method.lora.rank", 0, "--method.lora.rank must be >= 1, got 0"),
    ("method.binary.bits", 12, "--method.binary.bits must be a positive multiple of 8, got 12"),
    ("optim.lr", 0.0, "--optim.lr must be > 0, got 0.0"),
    ("mesh.tensor", 0, "--mesh.tensor must be >= 1 or -1, got 0"),
    ("mesh", MeshConfig(data=-1, fsdp=-1), "--mesh.data/--mesh.fsdp/--mesh.tensor = -1/-1/1: at most one axis may be -1"),
])
def test_config_validation_names_the_flag(field, value, message):
    with pytest.raises(FlagError) as err:
        _with(TrainConfig(), field, value).validate()
    assert str(err.value).startswith(message)
    assert err.traceback[-1].name == "validate"  # renamed in place: --debug shows where it was raised


def _main(exc: BaseException | None = None, seen: list | None = None):
    @entry_point
    def main(argv: list[str]) -> str:
        if seen is not None:
            seen.append(argv)
        if exc is not None:
            raise exc
        return "done"
    return main


def _refusal(capsys, main, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_entry_point_prints_one_line_with_exit_status_2(capsys, tmp_path):
    assert _main()([]) == "done"
    assert _refusal(capsys, _main(FlagError("batch_size", "must be >= 1, got 0")), []) == \
        "error: --batch-size must be >= 1, got 0"
    # a multi-line message still ends as one line
    assert _refusal(capsys, _main(UsageError("first\n  second")), []) == "error: first; second"
    try:
        open(tmp_path / "absent.json")
    except FileNotFoundError as e:
        missing = e
    assert _refusal(capsys, _main(missing), []) == f"error: no such file or folder ({tmp_path / 'absent.json'}): check the path"


def test_debug_flag_and_environment_show_the_traceback(capsys, monkeypatch):
    seen: list = []
    main = _main(UsageError("bad request"), seen)
    with pytest.raises(UsageError):
        main(["--x", "1", "--debug"])
    assert seen == [["--x", "1"]]  # the command itself never sees --debug
    monkeypatch.setenv("CORA_DEBUG", "1")
    with pytest.raises(UsageError):
        main([])
    assert capsys.readouterr().err == ""


def test_bugs_keep_their_traceback():
    with pytest.raises(ZeroDivisionError):
        _main(ZeroDivisionError("a bug"))([])
    with pytest.raises(ValueError):  # a plain ValueError is not a request the user can fix
        _main(ValueError("a bug"))([])


def test_nested_entry_points_leave_the_error_to_the_outermost(capsys):
    inner = _main(SetupError("inner problem: do this"))

    @entry_point
    def outer(argv: list[str]) -> None:
        inner(argv)

    assert _refusal(capsys, outer, ["--debug-not"]) == "error: inner problem: do this"
    with pytest.raises(SetupError):
        outer(["--debug"])


@pytest.mark.parametrize("argv, expected", [
    ([str(ROOT / "train.py"), "cora", "--preset", "demo-ml100k", "--batch-size", "0"],
     "error: --batch-size must be >= 1, got 0"),
    (["-m", "cora_jax.data", "stats", "no-such-split-folder"],
     "error: no-such-split-folder: not a folder holding train/valid/valid_small/test .jsonl.gz: "),
])
def test_real_scripts_print_one_line(argv, expected, tmp_path):
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(expected), proc.stderr
