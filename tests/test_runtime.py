import platform
import subprocess
import sys

import pytest

# In a child process: malloc and touch 256 MiB, free it, do it again; print the page faults of the second round.
CHILD = """
import ctypes, resource, sys
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "retain":
    from cora_jax.runtime import retain_freed_memory
    assert retain_freed_memory()
size = 1 << 28
p = libc.malloc(size); ctypes.memset(p, 1, size); libc.free(p)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
p = libc.malloc(size); ctypes.memset(p, 1, size)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _second_round_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_retained_memory_is_reused_without_page_faults():
    pages = (1 << 28) // 4096
    assert _second_round_faults("default") > pages // 2  # glibc unmaps a freed 256 MiB block ...
    assert _second_round_faults("retain") < pages // 20  # ... and keeps it once told to
