"""Process policies (multimoe/process.py): glibc's allocator told to keep freed memory, and a worker that dies with
its parent, both through the process's own libc symbols."""

import platform
import signal
import subprocess
import sys

import pytest

from multimoe.process import retain_freed_memory

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
