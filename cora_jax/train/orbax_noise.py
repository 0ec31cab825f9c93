"""Quiets the tracebacks and log records that Orbax's orphaned reads print after a failed checkpoint read."""
from __future__ import annotations

import inspect
import logging
import pathlib
import sys

_read_dirs: set[str] = set()  # the checkpoint folders read so far; a record naming one is dropped


def quiet_orphaned_reads(directory: pathlib.Path) -> None:
    """After a failed restore, Orbax's other reads of the checkpoint end on its closed event loop, each
    printing an 'Event loop is closed' traceback or a '... exception was never retrieved' log record
    (hundreds for a large model); the CheckpointReadError already says what is wrong, so these
    process-wide filters drop just those: records that name a checkpoint folder being read, or whose
    exception was raised in Orbax. The filters are installed once; `directory` joins the folders."""
    _read_dirs.add(str(directory))
    if len(_read_dirs) > 1:
        return
    previous = sys.unraisablehook

    def hook(u) -> None:
        orbax_coroutine = inspect.iscoroutine(u.object) and "/orbax/" in u.object.cr_code.co_filename
        loop_closed = isinstance(u.exc_value, RuntimeError) and "Event loop is closed" in str(u.exc_value)
        if not (orbax_coroutine or loop_closed):
            previous(u)

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(lambda r: not _orphaned_read_failure(r))


def _orphaned_read_failure(record: logging.LogRecord) -> bool:
    """A 'Task / Future / _GatheringFuture exception was never retrieved' record of a checkpoint read."""
    if "exception was never retrieved" not in str(record.msg):
        return False
    text = record.getMessage()
    if "/orbax/" in text or any(d in text for d in _read_dirs):
        return True
    err = record.exc_info[1] if record.exc_info else None
    while err is not None:
        tb = err.__traceback__
        while tb is not None:
            if "/orbax/" in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
        err = err.__cause__ or err.__context__
    return False
