"""Image encoders: a 2D image or a 3D volume -> P tokens of width D; an optional timm backbone.

Input (``multimoe.data.kinds.image``): ``x_BVYX`` (or ``x_BVZYX``) and ``missing_BYX`` (``missing_BZYX``: True at
unobserved pixels, everywhere in an absent row). Shape letters: the legend in ``multimoe/__init__.py`` (V channels,
X, Y, Z width, height, depth). Masked pixels are zeroed before reading and the observed mask is one more input
channel, so a masked pixel's value never changes the tokens.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multimoe.config import ConfigError, EncoderConfig
from multimoe.data.kinds.base import KindShape
from multimoe.errors import optional_import


def grid(tokens: int, dims: int) -> tuple[int, ...]:
    """``dims`` factors of ``tokens``, as even as they go: the pooled token grid (16 -> 4 x 4, 8 -> 2 x 2 x 2)."""
    if dims == 1:
        return (tokens,)
    first = max(d for d in range(1, int(round(tokens ** (1 / dims))) + 1) if tokens % d == 0)
    return (first, *grid(tokens // first, dims - 1))


class ImageCNN(nn.Module):
    """A small CNN trained from scratch, 2D or 3D by the input (Flex-MoE encodes ADNI's MRI volumes with a 3D CNN):
    blocks of 3x3 (3x3x3) convolution, group norm and GELU, widths w, 2w, 4w, each later block halving the grid while
    it stays at least as large as the token grid; then adaptive average pooling to a token grid of P cells (P = 16:
    4 x 4, or 4 x 2 x 2 in 3D), each cell a token: a linear map to D plus a learned position embedding."""

    def __init__(self, shape: KindShape, tokens: int, dim: int, cfg: EncoderConfig, width: int = 32) -> None:
        super().__init__()
        V, spatial = shape.shape[0], shape.shape[1:]
        if len(spatial) not in (2, 3):
            raise ConfigError(f"the image encoder reads 2D or 3D images; got a per-sample shape {shape.shape}")
        conv = nn.Conv2d if len(spatial) == 2 else nn.Conv3d
        self.grid = grid(tokens, len(spatial))
        layers, channels, size = [], V + 1, list(spatial)
        for i, out in enumerate((width, 2 * width, 4 * width)):
            stride = 2 if i > 0 and all(s // 2 >= g for s, g in zip(size, self.grid)) else 1
            size = [math.ceil(s / stride) for s in size]
            layers += [conv(channels, out, 3, stride=stride, padding=1), nn.GroupNorm(min(8, out), out), nn.GELU()]
            channels = out
        self.net = nn.Sequential(*layers)
        self.pool = F.adaptive_avg_pool2d if len(spatial) == 2 else F.adaptive_avg_pool3d
        self.proj = nn.Linear(channels, dim)
        self.pos_PD = nn.Parameter(torch.zeros(tokens, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, missing: Tensor) -> Tensor:
        observed = (~missing)[:, None].to(x.dtype)
        h = self.net(torch.cat([x * observed, observed], dim=1))
        cells = self.pool(h, self.grid).flatten(2).transpose(1, 2)  # B x P x channels
        return self.norm(self.proj(cells) + self.pos_PD)


class TimmBackbone(nn.Module):
    """A timm model by name with weights from a local file (``pip install 'multimoe[vision]'``): its feature map
    pooled to the token grid, one linear map to D. Nothing is downloaded: ``weights`` must be a file on this machine."""

    def __init__(self, shape: KindShape, tokens: int, dim: int, cfg: EncoderConfig, model: str = "",
                 weights: str = "") -> None:  # fmt: skip
        super().__init__()
        timm = optional_import("timm", "vision", "a timm image backbone")
        if not model or not weights or not Path(weights).is_file():
            raise ConfigError(
                f"the timm image encoder needs a model name and its weights as a local file (got model={model!r}, "
                f"weights={weights!r}); multimoe never downloads weights"
            )
        if len(shape.shape) != 3:
            raise ConfigError("timm backbones read 2D images (channels, height, width)")
        self.body = timm.create_model(
            model, pretrained=True, pretrained_cfg_overlay={"file": weights}, num_classes=0, in_chans=shape.shape[0]
        )
        self.grid = grid(tokens, 2)
        self.proj = nn.Linear(self.body.num_features, dim)

    def forward(self, x: Tensor, missing: Tensor) -> Tensor:
        h = self.body.forward_features(x.masked_fill(missing[:, None], 0.0))
        return self.proj(F.adaptive_avg_pool2d(h, self.grid).flatten(2).transpose(1, 2))
