"""Process-level policies on Linux (glibc), each a no-op elsewhere: keep freed memory for reuse (training), release it
(chunked prediction), die with the parent.

Allocator: glibc's malloc serves large blocks with mmap and trims the heap top, so a training step that frees and
re-allocates the same activations every step faults every page of them back in, every step. On the 2-core VM where
the engine was measured (benchmarks/), that cost about 2 ms of a 15 ms Flex-MoE training step and 0.7 ms of an 11 ms
dense one (an MoE makes more, and more varied, tensors than a dense FFN). jemalloc or tcmalloc preloaded do the same
job; this needs no extra library. The heap keeps what it frees, so its size follows fragmentation: the published
Flex-MoE recipe on mfeat (3 epochs with validation, one thread, freed memory returned after each epoch and each
validation by ``release_freed_memory``) peaked at 839 MB when blocks up to 256 MB stayed in the heap, 695 MB with
blocks of 4 MB and more served by mmap (the default below), 882 MB with glibc's own policy (benchmarks/
train_throughput.py --recipe published prints the speed).

Both reach libc the same way: through the symbols already loaded into the process (``ctypes.CDLL(None)``), so no
library is looked up by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1
_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


def _libc_function(name: str):
    """A C library function of this process, or None (not Linux, or a libc without it, e.g. musl's mallopt)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None


def retain_freed_memory(mmap_threshold: int = 4 << 20) -> bool:
    """Keep freed blocks smaller than ``mmap_threshold`` bytes for reuse and never trim the heap (glibc only;
    elsewhere a no-op). Returns whether the policy is in force. Safe to call repeatedly."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, min(mmap_threshold, _INT_MAX)) == 1 and mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1


def release_freed_memory() -> bool:
    """Return the heap's free memory to the system now (glibc ``malloc_trim``; elsewhere a no-op). A loop over
    chunks of different data (``multimoe predict``) otherwise keeps the fragmented heap of every earlier chunk: its
    resident memory grows chunk after chunk. Returns whether memory was released."""
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim(0) == 1


def die_with_parent() -> None:
    """Ask the kernel to kill this process when its parent dies (a killed benchmark would otherwise leave its
    workers training cells whose results nobody records); exits at once if the parent is already gone."""
    prctl = _libc_function("prctl")
    if prctl is None:
        return
    with contextlib.suppress(OSError):
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)
