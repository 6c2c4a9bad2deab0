"""Process policies (multimoe/process.py): glibc's allocator told to keep freed memory, and a worker that dies with
its parent, both through the process's own libc symbols."""

import platform
import signal
import subprocess
import sys

import pytest

from multimoe.process import release_freed_memory, retain_freed_memory

LINUX_GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def test_retain_freed_memory_applies_on_glibc_and_is_idempotent():
    first, second = retain_freed_memory(), retain_freed_memory()
    assert first == second == LINUX_GLIBC


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux only")
def test_die_with_parent_sets_the_parent_death_signal():
    code = (
        "import ctypes, signal\n"
        "from multimoe.process import die_with_parent\n"
        "die_with_parent()\n"
        "sig = ctypes.c_int(0)\n"
        "ctypes.CDLL(None).prctl(2, ctypes.byref(sig))\n"  # PR_GET_PDEATHSIG
        "print(sig.value)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == signal.SIGKILL


def test_release_freed_memory_returns_the_heap_to_the_system_on_glibc():
    blocks = [bytearray(64 << 10) for _ in range(2000)]  # 128 MB of heap blocks (below the mmap threshold)
    del blocks
    assert release_freed_memory() == LINUX_GLIBC  # glibc's malloc_trim: 1 when it released memory
