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
    fault its buffers back in a page at a time: ~315k page faults per step when it happened here
    (it depends on which thread allocates), and with torch in the same process a step then spent
    7-10 s in the kernel. One arena, no mmap and no trimming make the buffers of one step the free
    heap blocks of the next; the process keeps its peak heap until it exits. (A 2 GiB trim threshold
    still let a 40-step training run fault 3.3 M pages, 60 s of system time; with none, 1.3 M and
    38 s.) Call it before the first jax computation (it sets how threads created later allocate).
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
