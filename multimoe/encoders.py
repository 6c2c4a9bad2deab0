"""Per-modality encoders: a modality's feature vector -> P tokens of width D.

Shapes: B batch, F features, P tokens, D width.
Encoders run on every row; the model replaces the rows of absent modalities with the missing-modality fill, so an
absent modality's zeros never reach the loss and its encoder gets no gradient from it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multimoe.config import EncoderConfig


class PatchLinear(nn.Module):
    """Flex-MoE's tabular encoder: zero-pad the features to P*ceil(F/P), cut into P chunks, one shared linear map
    chunk -> D, no nonlinearity (Flex-MoE, §3; its public PatchEmbeddings)."""

    def __init__(self, features: int, tokens: int, dim: int, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cell_mask = cfg.cell_mask
        width = features * (2 if cfg.cell_mask else 1)
        self.tokens = tokens
        self.chunk = math.ceil(width / tokens)
        self.pad = self.chunk * tokens - width
        self.proj = nn.Linear(self.chunk, dim)

    def forward(self, x_BF: Tensor, missing_BF: Tensor) -> Tensor:
        if self.cell_mask:
            x_BF = torch.cat([x_BF, missing_BF.to(x_BF.dtype)], dim=1)
        x = F.pad(x_BF, (0, self.pad)).view(x_BF.shape[0], self.tokens, self.chunk)
        return self.proj(x)


class MLPEncoder(nn.Module):
    """A two-layer MLP from the whole feature vector to P tokens (features interact before tokenisation)."""

    def __init__(self, features: int, tokens: int, dim: int, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cell_mask = cfg.cell_mask
        self.tokens, self.dim = tokens, dim
        width = features * (2 if cfg.cell_mask else 1)
        self.net = nn.Sequential(nn.Linear(width, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, tokens * dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x_BF: Tensor, missing_BF: Tensor) -> Tensor:
        if self.cell_mask:
            x_BF = torch.cat([x_BF, missing_BF.to(x_BF.dtype)], dim=1)
        return self.norm(self.net(x_BF).view(x_BF.shape[0], self.tokens, self.dim))


ENCODERS: dict[str, type[nn.Module]] = {"patch_linear": PatchLinear, "mlp": MLPEncoder}


def build_encoder(features: int, tokens: int, dim: int, cfg: EncoderConfig) -> nn.Module:
    if cfg.kind not in ENCODERS:
        raise ValueError(f"unknown encoder {cfg.kind!r}; choose one of: {', '.join(ENCODERS)}")
    return ENCODERS[cfg.kind](features, tokens, dim, cfg)
