"""Dropout with a fast mask draw: keep each element with probability 1 - p, scale kept ones by 1 / (1 - p).

The same distribution as ``torch.nn.functional.dropout``; only the draw differs. On CPU torch's ``bernoulli_``
costs about 9 ns per element, while ``uniform_`` and a comparison cost under 3 (a Flex-MoE step on CPU spent ~2.5 ms
of ~16 ms drawing its three dropout masks). Draws come from torch's global generator, so runs stay seeded.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def drop(x: Tensor, p: float, training: bool = True) -> Tensor:
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    keep = torch.empty_like(x).uniform_() >= p
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
