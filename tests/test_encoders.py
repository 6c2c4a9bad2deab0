import pytest
import torch

from multimoe.config import ConfigError, EncoderConfig
from multimoe.encoders import PatchLinear, PeriodicEmbedding, PeriodicMLPEncoder
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


def test_periodic_embedding_by_hand():
    # feature 0: c = 0.25, x = 1 -> angle pi/2 -> (cos, sin) = (0, 1); [0, 1] @ [[1, 2], [3, 4]] + [0.5, -10]
    # = [3.5, -6] -> ReLU [3.5, 0]. Feature 1: c = 0.5 -> angle pi -> (-1, 0); [-1, 0] @ [[1, -1], [2, 2]] = [-1, 1]
    # -> [0, 1]
    emb = PeriodicEmbedding(2, frequencies=1, scale=1.0, width=2)
    with torch.no_grad():
        emb.frequencies_FK.copy_(torch.tensor([[0.25], [0.5]]))
        emb.weight_FKD.copy_(torch.tensor([[[1.0, 2], [3, 4]], [[1, -1], [2, 2]]]))
        emb.bias_FD.copy_(torch.tensor([[0.5, -10], [0, 0]]))
    out = emb(torch.tensor([[1.0, 1.0]]))
    torch.testing.assert_close(out, torch.tensor([[[3.5, 0.0], [0.0, 1.0]]]), atol=1e-6, rtol=0)


def test_periodic_mlp_reads_each_features_embedding_then_the_cell_mask():
    cfg = EncoderConfig(kind="periodic_mlp", hidden=8, cell_mask=True)
    cfg.periodic.frequencies, cfg.periodic.width = 3, 5
    enc = PeriodicMLPEncoder(4, 2, 6, cfg)
    assert enc.net[0].in_features == 4 * 5 + 4
    x, missing = torch.randn(3, 4), torch.zeros(3, 4, dtype=torch.bool)
    expected = enc._tokens(torch.cat([enc.embed(x).flatten(1), missing.float()], dim=1))
    torch.testing.assert_close(enc(x, missing), expected)
    assert not torch.allclose(enc(x, missing), enc(x, ~missing))
    enc(x, missing).sum().backward()  # the frequencies are trained
    assert enc.embed.frequencies_FK.grad is not None and enc.embed.frequencies_FK.grad.abs().sum() > 0


def test_cell_mask_changes_the_encoding():
    enc = ENCODERS.build("mlp", 4, 2, 8, EncoderConfig(kind="mlp", cell_mask=True))
    x = torch.zeros(1, 4)
    a = enc(x, torch.zeros(1, 4, dtype=torch.bool))
    b = enc(x, torch.ones(1, 4, dtype=torch.bool))
    assert not torch.allclose(a, b)


def test_unknown_encoder_lists_choices():
    with pytest.raises(ConfigError, match="patch_linear"):
        ENCODERS.build("resnet", 4, 2, 8, EncoderConfig(kind="resnet"))


def test_the_periodic_section_changes_a_digest_only_when_set():
    from multimoe.bench.sweep import config_digest
    from multimoe.registry import load_config

    base = config_digest(load_config("configs/multimoe.yaml"))
    assert config_digest(load_config("configs/multimoe.yaml", ["model.encoder.periodic.width=16"])) == base
    assert config_digest(load_config("configs/multimoe.yaml", ["model.encoder.periodic.width=8"])) != base
