"""The CPU allocator policy: applies on Linux with glibc, is idempotent, and leaves computing unchanged."""

import sys

import torch

from multimoe.allocator import retain_freed_memory


def test_retain_freed_memory_applies_on_glibc_and_is_idempotent():
    first, second = retain_freed_memory(), retain_freed_memory()
    assert first == second
    if sys.platform.startswith("linux"):
        import platform

        assert first == (platform.libc_ver()[0] == "glibc")
    x = torch.randn(512, 512)
    torch.testing.assert_close((x @ x).sum(), (x @ x).sum())
