"""Missing-modality fills: what stands in for an absent modality's P x D token block.

Shapes: B batch, M modalities, P tokens, D width, C = 2^M - 1 combinations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BankFill(nn.Module):
    """Flex-MoE's missing-modality bank, shape (2^M - 1, M, P, D), initialised N(0, 1): an absent modality m of a
    sample with combination c is filled with bank[c, m]. Row 0 (the full set) is never read. It grows as 2^M."""

    def __init__(self, modalities: int, tokens: int, dim: int) -> None:
        super().__init__()
        self.bank_CMPD = nn.Parameter(torch.randn((1 << modalities) - 1, modalities, tokens, dim))

    def forward(self, combo_B: Tensor) -> Tensor:
        return self.bank_CMPD[combo_B]


class TokenFill(nn.Module):
    """One learned P x D block per modality, whatever else is observed (a learned missing indicator)."""

    def __init__(self, modalities: int, tokens: int, dim: int) -> None:
        super().__init__()
        self.token_MPD = nn.Parameter(torch.randn(modalities, tokens, dim))

    def forward(self, combo_B: Tensor) -> Tensor:
        return self.token_MPD.expand(combo_B.shape[0], *self.token_MPD.shape)


class ZeroFill(nn.Module):
    """Zeros (FuseMoE's public code)."""

    def __init__(self, modalities: int, tokens: int, dim: int) -> None:
        super().__init__()
        self.shape = (modalities, tokens, dim)

    def forward(self, combo_B: Tensor) -> Tensor:
        return torch.zeros((), device=combo_B.device).expand(combo_B.shape[0], *self.shape)


FILLS: dict[str, type[nn.Module]] = {"bank": BankFill, "token": TokenFill, "zero": ZeroFill}


def build_fill(kind: str, modalities: int, tokens: int, dim: int) -> nn.Module:
    if kind not in FILLS:
        raise ValueError(f"unknown missing-modality fill {kind!r}; choose one of: {', '.join(FILLS)}")
    return FILLS[kind](modalities, tokens, dim)
