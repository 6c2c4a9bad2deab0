"""Missing-modality fills: what stands in for an absent modality's P x D token block, given the sample's
combination index and presence mask.

Shape letters: the legend in ``multimoe/__init__.py`` (B batch, M modalities, P tokens, D width, S = 2^M - 1
combinations).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from multimoe.batch import num_combinations


class BankFill(nn.Module):
    """Flex-MoE's missing-modality bank, shape (2^M - 1, M, P, D), initialised N(0, 1): an absent modality m of a
    sample with combination c is filled with bank[c, m]. Row 0 (the full set) is never read. It grows as 2^M."""

    def __init__(self, modalities: int, tokens: int, dim: int) -> None:
        super().__init__()
        self.bank_SMPD = nn.Parameter(torch.randn(num_combinations(modalities), modalities, tokens, dim))

    def forward(self, combo_B: Tensor, present_BM: Tensor) -> Tensor:
        # index_select, not bank[combo_B]: the same values, and its backward (index_add) is ~6x faster on CPU
        S, M, P, D = self.bank_SMPD.shape
        return self.bank_SMPD.view(S, M * P * D).index_select(0, combo_B).view(-1, M, P, D)


class TokenFill(nn.Module):
    """One learned P x D block per modality, whatever else is observed (a learned missing indicator)."""

    def __init__(self, modalities: int, tokens: int, dim: int) -> None:
        super().__init__()
        self.token_MPD = nn.Parameter(torch.randn(modalities, tokens, dim))

    def forward(self, combo_B: Tensor, present_BM: Tensor) -> Tensor:
        return self.token_MPD.expand(combo_B.shape[0], *self.token_MPD.shape)


class AdditiveFill(nn.Module):
    """A bank that scales (METHODS.md §4): the fill of absent modality m is a learned token plus the sum, over the
    modalities j the sample has, of a learned P x D embedding of (j -> m). It depends on the observed set like
    Flex-MoE's bank, with M^2 blocks instead of (2^M - 1) x M, and is defined for combinations never seen in
    training."""

    def __init__(self, modalities: int, tokens: int, dim: int) -> None:
        super().__init__()
        self.token_MPD = nn.Parameter(torch.randn(modalities, tokens, dim))
        self.from_MMPD = nn.Parameter(0.02 * torch.randn(modalities, modalities, tokens, dim))

    def forward(self, combo_B: Tensor, present_BM: Tensor) -> Tensor:
        M, _, P, D = self.from_MMPD.shape
        observed = present_BM.to(self.from_MMPD.dtype) @ self.from_MMPD.reshape(M, M * P * D)
        return self.token_MPD + observed.view(-1, M, P, D)


class ZeroFill(nn.Module):
    """Zeros (FuseMoE's public code)."""

    def __init__(self, modalities: int, tokens: int, dim: int) -> None:
        super().__init__()
        self.shape = (modalities, tokens, dim)

    def forward(self, combo_B: Tensor, present_BM: Tensor) -> Tensor:
        return torch.zeros((), device=combo_B.device).expand(combo_B.shape[0], *self.shape)
