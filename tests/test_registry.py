"""The open registries (multimoe/registry.py): names checked right after loading, lazy targets, user additions."""

import subprocess
import sys

import pytest
from torch import nn

from multimoe.config import ConfigError, read_config
from multimoe.registry import ARCHS, FILLS, REGISTRIES, check, is_baseline, load_config


@pytest.mark.parametrize("name", list(REGISTRIES))
def test_every_entry_loads_its_target(name):
    registry = REGISTRIES[name]
    assert registry.names()
    for entry in registry.entries.values():
        assert entry.load() is not None and entry.summary


@pytest.mark.parametrize(
    "override, choices",
    [
        ("model.fill=mean", "model.fill='mean' is not valid; choose one of: bank, token, zero, additive"),
        ("model.moe.router.kind=hash", "softmax_topk, noisy_topk, laplace, gaussian"),
        ("model.encoder.kind=cnn", "patch_linear, mlp"),
        ("model.arch=xgboost", "fusion, late_fusion, i2moe, confsmoe, moe_retriever, logreg, hgb"),
        ("data.name=adni", "mfeat, support2, landsat, synthetic"),
    ],
)
def test_unknown_names_are_refused_at_load_with_the_choices(override, choices):
    read_config(None, [override])  # structure and types are fine: the name is the registry's to check
    with pytest.raises(ConfigError, match=choices.replace("(", r"\(")):
        load_config(None, [override])


def test_a_users_spec_needs_no_dataset_name():
    check(read_config(None, ["data.spec=my.yaml", "data.name=anything"]))


def test_baselines_are_told_apart_from_neural_archs():
    assert [is_baseline(a) for a in ARCHS] == [False] * 5 + [True, True]


def test_a_registered_component_is_valid_in_configs_and_buildable():
    class Halves(nn.Module):
        def __init__(self, modalities, tokens, dim):
            super().__init__()
            self.shape = (modalities, tokens, dim)

    FILLS.register("halves", Halves, "a test fill")
    try:
        assert load_config(None, ["model.fill=halves"]).model.fill == "halves"
        assert FILLS.build("halves", 2, 3, 4).shape == (2, 3, 4)
        with pytest.raises(ValueError, match="already registered"):
            FILLS.register("halves", Halves)
    finally:
        del FILLS.entries["halves"]


def test_checking_and_listing_load_no_torch():
    code = (
        "import sys\n"
        "from multimoe.registry import REGISTRIES, load_config, presets\n"
        "load_config('configs/flexmoe.yaml', ['model.fill=token'])\n"
        "assert [r.names() for r in REGISTRIES.values()] and presets()\n"
        "print(sorted(m for m in ('torch', 'pandas', 'sklearn') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_registries_cover_every_open_config_key():
    assert {r.key for r in REGISTRIES.values()} == {
        "model.encoder.kind",
        "model.fill",
        "model.moe.router.kind",
        "model.arch",
        "data.name",
    }
