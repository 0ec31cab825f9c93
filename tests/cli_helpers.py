"""Shared helper of the command-line tests (not a test module)."""
import pytest


def error_line(capsys, main, argv: list[str]) -> str:
    """The one line a refused command prints (exit status 2, nothing else on stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]
