"""Process-wide settings of the host runtime, applied by the entry points (train.py, eval.py, bench/)."""
from __future__ import annotations

import ctypes
import platform
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def retain_freed_memory() -> bool:
    """Keep memory that a step frees for the next step instead of handing it back to the kernel.

    glibc serves a large allocation made outside its main heap (XLA's per-execution temporaries:
    over 1 GB for a SmolLM2 training step) with a fresh mmap and unmaps it on free, so a step can
    fault its buffers back in a page at a time (whether it does depends on which thread allocates).
    One arena, no mmap and no trimming make the buffers of one step the free heap blocks of the next;
    the process keeps its peak heap until it exits. No trim threshold at all, because a finite one
    still lets pages go back and fault in again (figures: bench/README.md, "Host memory setting").
    Call it before the first jax computation (it sets how threads created later allocate).
    glibc on Linux only; elsewhere a no-op. Returns whether the settings were applied.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    never = -1  # mallopt takes an int; glibc reads the threshold as size_t, so -1 is SIZE_MAX
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, never))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)
