"""CPU allocator policy: keep freed memory in the process for reuse instead of returning it to the OS.

glibc's malloc serves large blocks with mmap and trims the heap top, so a training step that frees and re-allocates
the same activations every step faults every page of them back in, every step. On the 2-core VM where the engine
was measured (benchmarks/), that cost about 2 ms of a 15 ms Flex-MoE training step and 0.7 ms of an 11 ms dense one
(an MoE makes more, and more varied, tensors than a dense FFN). jemalloc or tcmalloc preloaded do the same job;
this needs no extra library. The process then holds on to its peak heap, which a training loop reaches every step
anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1


def retain_freed_memory(mmap_threshold: int = 256 << 20) -> bool:
    """Keep freed blocks smaller than ``mmap_threshold`` bytes for reuse and never trim the heap (glibc only;
    elsewhere a no-op). Returns whether the policy is in force. Safe to call repeatedly."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, min(mmap_threshold, _INT_MAX)) == 1 and mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
