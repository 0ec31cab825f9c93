import platform
import subprocess
import sys

import pytest

# In a child process: malloc and touch a block, free it, do it again; print the page faults of the second round.
CHILD = """
import ctypes, resource, sys
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "retain":
    from cora_jax.runtime import retain_freed_memory
    assert retain_freed_memory()
size = int(sys.argv[2])
p = libc.malloc(size); ctypes.memset(p, 1, size); libc.free(p)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
p = libc.malloc(size); ctypes.memset(p, 1, size)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _second_round_faults(mode: str, size: int) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(size)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("size", [pytest.param(1 << 28, id="256MiB"),
                                  pytest.param(3 << 30, id="3GiB", marks=pytest.mark.slow)])
def test_retained_memory_is_reused_without_page_faults(size):
    pages = size // 4096
    assert _second_round_faults("default", size) > pages // 2  # glibc unmaps a freed large block ...
    # ... and keeps it once told to, also a block over 2 GiB (more than a positive int threshold covers)
    assert _second_round_faults("retain", size) < pages // 20
