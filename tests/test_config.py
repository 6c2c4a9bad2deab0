from pathlib import Path

import pytest

from multimoe.config import Config, ConfigError, parse_overrides, replace
from multimoe.registry import load_config

CONFIGS = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))


def test_defaults_load():
    assert isinstance(load_config(), Config)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_preset_loads(path):
    load_config(path)


def test_overrides_are_typed():
    cfg = load_config(None, ["model.moe.router.top_k=2", "data.missing=mcar:0.3", "train.lr=1e-3", "seed=4"])
    assert cfg.model.moe.router.top_k == 2 and cfg.data.missing == "mcar:0.3"
    assert cfg.train.lr == 1e-3 and cfg.seed == 4


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key model\.moe\.topk.*num_experts, hidden, router"):
        load_config(None, ["model.moe.topk=2"])


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got 'many'"):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(ConfigError, match="expected bool"):
        load_config(None, ["train.progress=3"])


@pytest.mark.parametrize(
    "override, choices",
    [
        ("model.fill=mean", "bank, token, zero"),
        ("model.moe.router.kind=hash", "softmax_topk"),
        ("data.name=adni", "mfeat"),
        ("data.missing=mcar:1.5", "mcar:R"),
        ("data.missing=sometimes", "natural"),
        ("train.select=precision", "accuracy"),
    ],
)
def test_unknown_values_list_the_choices(override, choices):
    with pytest.raises(ConfigError, match=choices):
        load_config(None, [override])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["model.dim"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_replace_returns_a_validated_copy():
    cfg = load_config()
    new = replace(cfg, ["seed=3"])
    assert new.seed == 3 and cfg.seed == 0
    with pytest.raises(ConfigError):
        replace(cfg, ["seed=x"])


def test_combination_supervision_needs_a_shared_pool():
    with pytest.raises(ConfigError, match="shared pool"):
        load_config(None, ["model.moe.router.layout=disjoint"])
    load_config(None, ["model.moe.router.layout=disjoint", "model.moe.gate_loss.supervision=entropy"])
