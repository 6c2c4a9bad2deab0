import pytest
import torch

from multimoe.config import ConfigError, EncoderConfig
from multimoe.encoders import PatchLinear
from multimoe.registry import ENCODERS


@pytest.mark.parametrize("kind", [n for n, e in ENCODERS.entries.items() if e.kind == "table"])
@pytest.mark.parametrize("cell_mask", [False, True])
@pytest.mark.parametrize("features", [1, 6, 47, 240])
def test_encoder_shapes(kind, cell_mask, features):
    enc = ENCODERS.build(kind, features, 16, 32, EncoderConfig(kind=kind, hidden=24, cell_mask=cell_mask))
    x = torch.randn(5, features)
    out = enc(x, torch.zeros(5, features, dtype=torch.bool))
    assert out.shape == (5, 16, 32)
    assert torch.isfinite(out).all()


def test_patch_linear_is_the_published_chunking():
    # F=6, P=4 -> chunk 2, pad 2: token j sees features [2j, 2j+1] (zeros beyond F)
    enc = PatchLinear(6, 4, 3, EncoderConfig())
    x = torch.arange(1.0, 7.0)[None]
    out = enc(x, torch.zeros_like(x, dtype=torch.bool))
    W, b = enc.proj.weight, enc.proj.bias
    padded = torch.tensor([1.0, 2, 3, 4, 5, 6, 0, 0]).view(4, 2)
    torch.testing.assert_close(out[0], padded @ W.t() + b)


def test_cell_mask_changes_the_encoding():
    enc = ENCODERS.build("mlp", 4, 2, 8, EncoderConfig(kind="mlp", cell_mask=True))
    x = torch.zeros(1, 4)
    a = enc(x, torch.zeros(1, 4, dtype=torch.bool))
    b = enc(x, torch.ones(1, 4, dtype=torch.bool))
    assert not torch.allclose(a, b)


def test_unknown_encoder_lists_choices():
    with pytest.raises(ConfigError, match="patch_linear"):
        ENCODERS.build("resnet", 4, 2, 8, EncoderConfig(kind="resnet"))
