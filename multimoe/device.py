"""Where a run computes: the device, CPU threads and the allocator policy, and its peak memory afterwards."""

from __future__ import annotations

import resource

import torch
from threadpoolctl import threadpool_limits

from multimoe.config import ConfigError, check_device_name
from multimoe.process import retain_freed_memory


def check_device(spec: str) -> torch.device:
    """``torch.device(spec)``, or a ConfigError when this machine has no such device (checked before any work)."""
    check_device_name(spec)
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device={spec} but torch sees no CUDA device (torch {torch.__version__}, "
                f"{'a CPU-only build' if torch.version.cuda is None else 'no GPU visible'}); use train.device=cpu"
            )
        index = torch.device(spec).index
        if index is not None and index >= torch.cuda.device_count():
            raise ConfigError(f"train.device={spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(spec)


def set_threads(threads: int) -> None:
    """torch's and the BLAS/OpenMP pools scikit-learn uses (oversubscribed pools thrash); 0 keeps the defaults."""
    if threads:
        torch.set_num_threads(threads)
        threadpool_limits(threads)


def setup(spec: str, threads: int) -> torch.device:
    """Check the device, set the threads; on CPU keep freed memory for reuse (no page faults on activations
    re-allocated every step, multimoe/process.py)."""
    device = check_device(spec)
    set_threads(threads)
    if device.type == "cpu":
        retain_freed_memory()
    return device


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
