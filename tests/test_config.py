from pathlib import Path

import pytest

from multimoe.config import Config, ConfigError, parse_overrides, replace, to_dict
from multimoe.registry import load_config

CONFIGS = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))


def test_defaults_load():
    assert isinstance(load_config(), Config)


FLEXMOE = {  # the published recipe (METHODS.md §1) and architecture
    "model.arch": "fusion", "model.dim": 128, "model.tokens": 16, "model.heads": 4, "model.layers": 1,
    "model.dropout": 0.5, "model.ffn": "moe", "model.fill": "bank", "model.encoder.kind": "patch_linear",
    "model.moe.num_experts": 16, "model.moe.hidden": 256, "model.moe.router.kind": "noisy_topk",
    "model.moe.router.layout": "joint", "model.moe.router.top_k": 4, "model.moe.gate_loss.supervision": "combination",
    "model.moe.gate_loss.balance_exclude": "own", "model.moe.gate_loss.combination_map": "identity",
    "model.moe.capacity_factor": 0.0, "train.epochs": 50, "train.warmup_epochs": 5, "train.order": "descending",
    "train.batch_size": 8, "train.optimizer": "adam", "train.lr": 1e-4, "train.weight_decay": 0.0,
    "train.gate_loss_weight": 0.01, "train.modality_dropout": 0.0, "train.grad_clip": 0.0,
    "train.select": "accuracy", "train.patience": 0,
}  # fmt: skip
CPU_RECIPE = {"train.batch_size": 32, "train.lr": 4e-4, "train.epochs": 12, "train.patience": 4}
PRESETS = {
    "flexmoe": {"method": "flexmoe", **FLEXMOE},
    "flexmoe-cpu": {**FLEXMOE, "method": "flexmoe", **CPU_RECIPE},
    "flexmoe-code": {**FLEXMOE, "method": "flexmoe-code", "model.attn_residual": False, "model.attn_out_dropout": True,
                     "model.moe.grow_experts": "power_of_two", "model.moe.init": "fastmoe",
                     "model.moe.gate_loss.balance_exclude": "expert0", "train.order_ties": "seeded",
                     "train.class_weights": "code", "train.carry_val_gate_loss": True},
    "smoe": {**FLEXMOE, "method": "smoe", "model.fill": "token", "model.moe.router.kind": "softmax_topk",
             "model.moe.gate_loss.supervision": "balance"},
    "fusemoe": {**FLEXMOE, "method": "fusemoe", "model.fill": "token", "model.moe.router.kind": "laplace",
                "model.moe.router.layout": "per_modality", "model.moe.gate_loss.supervision": "entropy"},
    "dense": {**FLEXMOE, "method": "dense", "model.ffn": "dense", "model.dense_hidden": 1024, "model.fill": "token"},
    "late_fusion": {**FLEXMOE, "method": "late_fusion", "model.arch": "late_fusion"},
    "logreg": {"method": "logreg", "model.arch": "logreg", "model.logreg_c": 0.1},
    "hgb": {"method": "hgb", "model.arch": "hgb", "model.hgb_max_iter": 100},
    "i2moe": {
        "method": "i2moe", "model.arch": "i2moe", "model.dim": 128, "model.tokens": 16, "model.heads": 4,
        "model.layers": 2, "model.dropout": 0.5, "model.ffn": "dense", "model.dense_hidden": 256,
        "model.encoder.kind": "patch_linear", "model.i2moe.temperature": 1.0, "model.i2moe.reweight_hidden": 256,
        "model.i2moe.reweight_layers": 3, "model.i2moe.perturbed": 0, "data.complete_cases": True,
        "train.epochs": 50, "train.warmup_epochs": 0, "train.batch_size": 32, "train.optimizer": "adam",
        "train.lr": 1e-4, "train.weight_decay": 0.0, "train.gate_loss_weight": 0.3, "train.select": "accuracy",
        "train.patience": 0,
    },
    "confsmoe": {
        "method": "confsmoe", "model.arch": "confsmoe", "model.dim": 128, "model.tokens": 16, "model.layers": 1,
        "model.dropout": 0.1, "model.ffn": "moe", "model.encoder.kind": "patch_linear",
        "model.moe.num_experts": 8, "model.moe.hidden": 128, "model.moe.router.kind": "noisy_topk",
        "model.moe.router.top_k": 2, "model.moe.gate_loss.supervision": "none", "model.confsmoe.router": "trained",
        "model.confsmoe.confidence": "token", "model.confsmoe.pre_impute": 10, "train.epochs": 30,
        "train.warmup_epochs": 0, "train.batch_size": 256, "train.optimizer": "adam", "train.lr": 3e-4,
        "train.weight_decay": 0.0, "train.gate_loss_weight": 1.0, "train.select": "f1", "train.patience": 0,
    },
    "moe_retriever": {
        "method": "moe_retriever", "model.arch": "moe_retriever", "model.dim": 128, "model.tokens": 16,
        "model.heads": 4, "model.layers": 1, "model.dropout": 0.5, "model.ffn": "dense", "model.dense_hidden": 256,
        "model.encoder.kind": "patch_linear", "model.retriever.candidates": 8, "model.retriever.shared": 4,
        "model.retriever.top_k": 4, "model.retriever.hidden": 256, "model.retriever.output": "retrieved",
        "model.retriever.inter_weight": 0.5, "model.retriever.warmup_epochs": 5,
        "model.retriever.short_support": "replace", "train.epochs": 20, "train.warmup_epochs": 0,
        "train.batch_size": 16, "train.optimizer": "adam", "train.lr": 1e-4, "train.weight_decay": 0.0,
        "train.gate_loss_weight": 0.01, "train.select": "accuracy", "train.patience": 0,
    },
    "multimoe": {
        "method": "multimoe", "model.dim": 64, "model.tokens": 4, "model.heads": 4, "model.layers": 1,
        "model.dropout": 0.2, "model.ffn": "moe", "model.fill": "bank", "model.encoder.kind": "mlp",
        "model.encoder.hidden": 256, "model.encoder.cell_mask": True, "model.moe.num_experts": 8,
        "model.moe.hidden": 128, "model.moe.router.kind": "softmax_topk", "model.moe.router.top_k": 2,
        "model.moe.gate_loss.supervision": "balance", "train.epochs": 100, "train.warmup_epochs": 0,
        "train.batch_size": 64, "train.optimizer": "adamw", "train.lr": 1e-3, "train.weight_decay": 0.05,
        "train.gate_loss_weight": 0.01, "train.modality_dropout": 0.2, "train.select": "loss", "train.patience": 15,
    },
}  # fmt: skip
PRESETS["i2moe-all"] = {**PRESETS["i2moe"], "method": "i2moe-all", "data.complete_cases": False}  # ours
PRESETS["multimoe-blend"] = {**PRESETS["multimoe"], "method": "multimoe-blend", "model.members": 5,
                             "model.blend": "hgb"}  # fmt: skip
PRESETS["multimoe-blend-svm"] = {**PRESETS["multimoe-blend"], "method": "multimoe-blend-svm", "model.blend": "hgb+svm"}


def test_every_preset_is_pinned():
    assert sorted(p.stem for p in CONFIGS) == sorted(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_recipe(name):
    """Each preset's method, architecture and training recipe, key by key (the faithful ones: as published)."""
    cfg = to_dict(load_config(Path(__file__).parents[1] / "configs" / f"{name}.yaml"))
    for key, expected in PRESETS[name].items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == expected, f"{name}: {key} = {node!r}, expected {expected!r}"


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
