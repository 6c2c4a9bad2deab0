"""Per-modality encoders: a modality's feature vector -> P tokens of width D.

Shape letters: the legend in ``multimoe/__init__.py`` (B batch, F features, P tokens, D width).
Encoders run on every row; the model replaces the rows of absent modalities with the missing-modality fill, so an
absent modality's zeros never reach the loss and its encoder gets no gradient from it.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multimoe.config import EncoderConfig


def input_width(features: int, cfg: EncoderConfig) -> int:
    """What an encoder reads: the features, and with ``cell_mask`` their missing-cell mask beside them."""
    return features * (2 if cfg.cell_mask else 1)


def mlp_input_width(features: int, cfg: EncoderConfig) -> int:
    """What the MLP of an ``mlp`` or ``periodic_mlp`` encoder reads: each feature's value (or its periodic
    embedding of ``periodic.width`` values), then the cell mask when asked."""
    per_feature = cfg.periodic.width if cfg.kind == "periodic_mlp" else 1
    return features * per_feature + (features if cfg.cell_mask else 0)


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
        return self._tokens(_with_mask(x_BF, missing_BF, self.cell_mask))

    def _tokens(self, h_BX: Tensor) -> Tensor:
        return self.norm(self.net(h_BX).view(h_BX.shape[0], self.tokens, self.dim))


class PeriodicEmbedding(nn.Module):
    """Each numeric feature x_j as ReLU(W_j [cos(2 pi c_j x_j), sin(2 pi c_j x_j)] + b_j): k trained frequencies
    c_j per feature, started from N(0, sigma^2), and the feature's own linear map 2k -> d (Gorishniy et al. 2022,
    "On Embeddings for Numerical Features in Tabular Deep Learning", PLR). A missing cell's 0 is embedded like any
    value; the cell mask, when read, says which cells those are."""

    def __init__(self, features: int, frequencies: int, scale: float, width: int) -> None:
        super().__init__()
        self.frequencies_FK = nn.Parameter(torch.randn(features, frequencies) * scale)
        bound = 1 / math.sqrt(2 * frequencies)  # nn.Linear's initialisation, per feature
        self.weight_FKD = nn.Parameter(torch.empty(features, 2 * frequencies, width).uniform_(-bound, bound))
        self.bias_FD = nn.Parameter(torch.empty(features, width).uniform_(-bound, bound))

    def forward(self, x_BF: Tensor) -> Tensor:
        angle_BFK = 2 * math.pi * self.frequencies_FK * x_BF.unsqueeze(-1)
        periodic_BFK = torch.cat([torch.cos(angle_BFK), torch.sin(angle_BFK)], dim=-1)
        return torch.relu(torch.einsum("bfk,fkd->bfd", periodic_BFK, self.weight_FKD) + self.bias_FD)


class PeriodicMLPEncoder(MLPEncoder):
    """The two-layer MLP encoder on periodic embeddings of the features (``model.encoder.periodic``) instead of
    their raw values: an MLP learns high-frequency functions of a feature (thresholds, as trees do) far more easily
    from them."""

    def __init__(self, features: int, tokens: int, dim: int, cfg: EncoderConfig) -> None:
        p = cfg.periodic
        super().__init__(mlp_input_width(features, cfg), tokens, dim, dataclasses.replace(cfg, cell_mask=False))
        self.cell_mask = cfg.cell_mask
        self.embed = PeriodicEmbedding(features, p.frequencies, p.scale, p.width)

    def forward(self, x_BF: Tensor, missing_BF: Tensor) -> Tensor:
        return self._tokens(_with_mask(self.embed(x_BF).flatten(1), missing_BF, self.cell_mask))
