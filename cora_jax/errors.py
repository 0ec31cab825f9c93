"""The project's own error types and the wrapper every command-line entry point runs under.

A `CoraError` is a request or an input the user can fix (a bad flag, a missing or foreign file, a
run directory of another configuration); its message says what is wrong, where, and what to do.
`entry_point` turns one into a single `error: ...` line on stderr and exit status 2; anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from typing import Callable, Iterator, TypeVar

DEBUG_FLAG = "--debug"
DEBUG_ENV = "CORA_DEBUG"
EXIT_STATUS = 2

T = TypeVar("T")


class CoraError(Exception):
    """Base of the project's errors: a problem with what the user asked for or gave, not a bug."""


class UsageError(CoraError):
    """A command line that names no valid request (a missing or contradictory option)."""


def flag_name(field: str) -> str:
    """The command-line flag of a dotted config field: model.branch_dropout -> --model.branch-dropout."""
    return "--" + ".".join(part.replace("_", "-") for part in field.split("."))


class FlagError(CoraError, ValueError):
    """A config value out of its range; `fields` are its (dotted) config fields, printed as flags."""

    def __init__(self, fields: str | tuple[str, ...], msg: str):
        self.fields = (fields,) if isinstance(fields, str) else tuple(fields)
        self.msg = msg
        super().__init__(self._text())

    def _text(self) -> str:
        return f"{'/'.join(flag_name(f) for f in self.fields)} {self.msg}"

    def nest(self, prefix: str) -> None:
        """Name the fields under `prefix`, the parent config's field that holds them."""
        self.fields = tuple(f"{prefix}.{f}" for f in self.fields)
        self.args = (self._text(),)


@contextlib.contextmanager
def flag_prefix(prefix: str) -> Iterator[None]:
    """Validate a nested config inside this: its FlagErrors then name the fields under `prefix`
    (the parent's field holding it), as the command line spells them. The error is renamed in
    place, so that --debug still shows where it was raised."""
    try:
        yield
    except FlagError as err:
        err.nest(prefix)
        raise


def one_line(err: BaseException) -> str:
    """The message of a user-facing error as one line (a missing path named as such)."""
    if isinstance(err, FileNotFoundError) and not isinstance(err, CoraError) and err.filename:
        return f"no such file or folder ({err.filename}): check the path"
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


_active = 0  # entry points running; a nested one (train.py cf -> main_cf) leaves errors to the outermost


def entry_point(main: Callable[[list[str]], T]) -> Callable[..., T]:
    """Wrap a command's `main(argv)`: argv defaults to sys.argv[1:] and loses `--debug`; a CoraError or
    FileNotFoundError ends the process with `error: <message>` on stderr and exit status 2, unless
    `--debug` was given or CORA_DEBUG=1, which show the traceback instead."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> T:
        global _active
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV) == "1"
        argv = [a for a in argv if a != DEBUG_FLAG]
        if _active:
            return main(argv)
        _active += 1
        try:
            return main(argv)
        except (CoraError, FileNotFoundError) as err:
            if debug:
                raise
            print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_STATUS) from None
        finally:
            _active -= 1

    return run
