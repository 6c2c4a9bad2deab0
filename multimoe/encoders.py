"""Per-modality encoders: a modality's feature vector -> P tokens of width D.

Shape letters: the legend in ``multimoe/__init__.py`` (B batch, F features, P tokens, D width).
Encoders run on every row; the model replaces the rows of absent modalities with the missing-modality fill, so an
absent modality's zeros never reach the loss and its encoder gets no gradient from it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multimoe.config import EncoderConfig


def input_width(features: int, cfg: EncoderConfig) -> int:
    """What an encoder reads: the features, and with ``cell_mask`` their missing-cell mask beside them."""
    return features * (2 if cfg.cell_mask else 1)


def _with_mask(x_BF: Tensor, missing_BF: Tensor, cell_mask: bool) -> Tensor:
    return torch.cat([x_BF, missing_BF.to(x_BF.dtype)], dim=1) if cell_mask else x_BF


class PatchLinear(nn.Module):
    """Flex-MoE's tabular encoder: zero-pad the features to P*ceil(F/P), cut into P chunks, one shared linear map
    chunk -> D, no nonlinearity (Flex-MoE, §3; its public PatchEmbeddings)."""

    def __init__(self, features: int, tokens: int, dim: int, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cell_mask = cfg.cell_mask
        width = input_width(features, cfg)
        self.tokens = tokens
        self.chunk = math.ceil(width / tokens)
        self.pad = self.chunk * tokens - width
        self.proj = nn.Linear(self.chunk, dim)

    def forward(self, x_BF: Tensor, missing_BF: Tensor) -> Tensor:
        x_BF = _with_mask(x_BF, missing_BF, self.cell_mask)
        return self.proj(F.pad(x_BF, (0, self.pad)).view(x_BF.shape[0], self.tokens, self.chunk))


class MLPEncoder(nn.Module):
    """A two-layer MLP from the whole feature vector to P tokens (features interact before tokenisation)."""

    def __init__(self, features: int, tokens: int, dim: int, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cell_mask = cfg.cell_mask
        self.tokens, self.dim = tokens, dim
        self.net = nn.Sequential(
            nn.Linear(input_width(features, cfg), cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, tokens * dim)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x_BF: Tensor, missing_BF: Tensor) -> Tensor:
        x_BF = _with_mask(x_BF, missing_BF, self.cell_mask)
        return self.norm(self.net(x_BF).view(x_BF.shape[0], self.tokens, self.dim))
