"""Encoders of series, images and text (multimoe/series_encoders.py, image_encoders.py, text_encoders.py): tokens of
the fusion layers' shape, finite for absent rows, gradients, masked positions ignored, determinism."""

import math

import pytest
import torch

from multimoe.config import ConfigError, EncoderConfig
from multimoe.data.kinds import KindShape, SeriesInput
from multimoe.image_encoders import grid
from multimoe.registry import ENCODERS

B, P, D = 5, 4, 12
SHAPES = {
    "series": KindShape("series", (3, 20)),
    "image": KindShape("image", (1, 16, 15)),
    "volume": KindShape("image", (2, 6, 7, 8)),
    "text": KindShape("text", (9,), vocab=50),
}
BUILT_IN = [(name, key) for name in ("mtand", "series_conv") for key in ("series",)]
BUILT_IN += [("cnn", "image"), ("cnn", "volume"), ("hashed_bag", "text")]


def inputs(key: str, seed: int = 0):
    """A batch with random masks; row 0 has nothing observed (an absent modality)."""
    g = torch.Generator().manual_seed(seed)
    shape = SHAPES[key].shape
    if key == "series":
        x = SeriesInput(torch.randn(B, *shape, generator=g), torch.rand(B, shape[1], generator=g).sort(dim=1).values)
        missing = torch.rand(B, *shape, generator=g) < 0.5
        missing[1, :, 10:] = True  # padding steps
        missing[2, 1] = True  # a channel never observed
    elif key == "text":
        x = torch.randint(1, 50, (B, *shape), generator=g)
        missing = torch.arange(shape[0]) >= torch.randint(1, shape[0], (B, 1), generator=g)
    else:
        x = torch.randn(B, *shape, generator=g)
        missing = torch.rand(B, *shape[1:], generator=g) < 0.2
    missing[0] = True
    return x, missing


def build(name: str, key: str):
    torch.manual_seed(0)
    return ENCODERS.build(name, SHAPES[key], P, D, EncoderConfig(hidden=16))


def test_every_non_table_encoder_is_tested_or_optional():
    kinds = {n: e.kind for n, e in ENCODERS.entries.items() if e.kind != "table"}
    assert set(kinds) == {name for name, _ in BUILT_IN} | {"timm", "hf"}


@pytest.mark.parametrize("name, key", BUILT_IN)
def test_tokens_have_the_fusion_shape_and_are_finite_when_nothing_is_observed(name, key):
    x, missing = inputs(key)
    out = build(name, key)(x, missing)
    assert out.shape == (B, P, D)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name, key", BUILT_IN)
def test_gradients_reach_every_parameter(name, key):
    enc = build(name, key)
    x, missing = inputs(key)
    enc(x, missing)[1:].square().sum().backward()
    for pname, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name, key", BUILT_IN)
def test_masked_positions_do_not_change_the_tokens(name, key):
    enc = build(name, key).eval()
    x, missing = inputs(key)
    if key == "series":  # other values where masked, other times at steps no channel observed
        unobserved_BU = missing.all(dim=1)
        changed = SeriesInput(
            torch.where(missing, torch.randn_like(x.values_BVU) * 100, x.values_BVU),
            torch.where(unobserved_BU, torch.rand_like(x.times_BU) * 50, x.times_BU),
        )
    elif key == "text":
        changed = torch.where(missing, torch.randint_like(x, 1, 50), x)
    else:
        changed = torch.where(missing[:, None], torch.randn_like(x) * 100, x)
    torch.testing.assert_close(enc(changed, missing), enc(x, missing), rtol=0, atol=1e-5)
    # and an observed position does change them
    flipped = missing.clone()
    flipped.view(B, -1)[1:, 0] = ~flipped.view(B, -1)[1:, 0]
    assert not torch.allclose(enc(x, flipped)[1:], enc(x, missing)[1:])


@pytest.mark.parametrize("name, key", BUILT_IN)
def test_same_seed_same_tokens(name, key):
    x, missing = inputs(key)
    a, b = build(name, key)(x, missing), build(name, key)(x, missing)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_mtand_interpolates_each_channel_from_its_own_observations():
    """One head, time embeddings that make every step equally attended: each channel's token input is the mean of
    that channel's observed values, whatever the other channel observed."""
    enc = ENCODERS.build("mtand", KindShape("series", (2, 4)), 3, 8, EncoderConfig(), heads=1)
    with torch.no_grad():
        enc.query.weight.zero_(), enc.query.bias.zero_()  # scores all 0: uniform weights over observed steps
    seen = {}
    enc.mlp.register_forward_hook(lambda m, i, o: seen.update(feats=i[0]))
    values = torch.tensor([[[1.0, 2.0, 3.0, 100.0], [10.0, 20.0, 30.0, 40.0]]])
    missing = torch.tensor([[[False, False, False, True], [True, False, True, True]]])
    enc(SeriesInput(values, torch.tensor([[0.0, 0.1, 0.5, 0.9]])), missing)
    torch.testing.assert_close(seen["feats"][0, :, :2], torch.tensor([[2.0, 20.0]] * 3))
    torch.testing.assert_close(seen["feats"][0, :, 2:], torch.ones(3, 2))  # both channels observed


def test_series_conv_tokens_read_each_segments_mean_log_std_and_observed_share():
    """Two channels, four steps, two tokens (segments of steps 0-1 and 2-3); a masked value (100) counts nowhere; row 1
    observes nothing of channel 0 in the second segment (mean and log std 0, share 0)."""
    enc = ENCODERS.build("series_conv", KindShape("series", (2, 4)), 2, 8, EncoderConfig())
    seen = {}
    enc.stats.register_forward_hook(lambda m, i, o: seen.update(feats=i[0]))
    values = torch.tensor([[[1.0, 3.0, 100.0, 5.0], [2.0, 2.0, 7.0, 7.0]]] * 2)
    missing = torch.zeros(2, 2, 4, dtype=torch.bool)
    missing[0, 0, 2] = True
    missing[1, 0, 2:] = True
    enc(SeriesInput(values, torch.tensor([[0.0, 0.1, 0.2, 0.3]] * 2)), missing)
    flat, one = 0.5 * math.log(1e-6), 0.5 * math.log(1.0 + 1e-6)  # log std of a constant segment; of 1, 3
    # per token: mean of channels 0 and 1, their log std, their observed share
    expected = torch.tensor([[[2.0, 2.0, one, flat, 1.0, 1.0], [5.0, 7.0, flat, flat, 0.5, 1.0]],
                             [[2.0, 2.0, one, flat, 1.0, 1.0], [0.0, 7.0, 0.0, flat, 0.0, 1.0]]])  # fmt: skip
    torch.testing.assert_close(seen["feats"], expected)


@pytest.mark.parametrize("tokens, dims, expected", [(16, 2, (4, 4)), (2, 2, (1, 2)), (7, 2, (1, 7)), (8, 3, (2, 2, 2)),
                                                    (16, 3, (2, 2, 4)), (1, 3, (1, 1, 1))])  # fmt: skip
def test_token_grid_is_as_square_as_the_count_allows(tokens, dims, expected):
    assert grid(tokens, dims) == expected


@pytest.mark.parametrize("name, key, words", [("timm", "image", "multimoe[vision]"), ("hf", "text", "multimoe[text]")])
def test_optional_backbones_say_what_to_install_and_that_weights_stay_local(name, key, words):
    with pytest.raises(ConfigError, match=r"pip install '" + words.replace("[", r"\[") + r"'.*local files only"):
        ENCODERS.build(name, SHAPES[key], P, D, EncoderConfig())
