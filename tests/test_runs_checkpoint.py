"""Checkpoints (multimoe/runs/checkpoint.py): config and version inside, no code executed on load, clear
errors on bad files."""

import shutil

import pytest
import torch
import yaml
from conftest import tiny_config

from multimoe import __version__
from multimoe.cli import main
from multimoe.data.dataset import DataSchema
from multimoe.errors import CheckpointError
from multimoe.model import build_model, resolve
from multimoe.runs.checkpoint import (
    load_checkpoint,
    load_training_state,
    read_meta,
    save_checkpoint,
    save_training_state,
)
from multimoe.runs.folder import RunFolder
from multimoe.runs.reopen import load_model
from multimoe.train import train

SCHEMA = DataSchema(("a", "b"), (5, 3), ("x", "y"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train(tiny_config(tmp_path_factory.mktemp("runs"), "train.epochs=1")).run_dir


def small_model(**overrides):
    cfg = tiny_config("unused", *[f"model.{k}={v}" for k, v in overrides.items()]).model
    cfg, _ = resolve(cfg, SCHEMA)
    return build_model(cfg, SCHEMA)


def test_checkpoint_carries_the_resolved_config_and_the_version(run_dir):
    meta = read_meta(run_dir / "best.safetensors")
    assert meta["version"] == __version__
    assert meta["config"] == yaml.safe_load((run_dir / "config.yaml").read_text())
    assert meta["schema"]["modalities"] == ["m0", "m1", "m2"] and meta["epoch"] == 1


@pytest.mark.parametrize(
    "damage",
    ["empty", "truncated header", "truncated data", "random bytes", "text", "pickle", "safetensors without metadata"],
)
def test_damaged_or_foreign_files_give_a_clear_error(run_dir, tmp_path, damage):
    good = (run_dir / "best.safetensors").read_bytes()
    path = tmp_path / "best.safetensors"
    if damage == "pickle":  # torch.save: loading it with pickle could execute code; we never unpickle
        torch.save({"x": torch.zeros(2)}, path)
    elif damage == "safetensors without metadata":
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(2)}, str(path))
    else:
        data = {
            "empty": b"",
            "truncated header": good[:50],
            "truncated data": good[: len(good) // 2],
            "random bytes": bytes(range(256)) * 4,
            "text": b'{"epoch": 3}\n',
        }[damage]
        path.write_bytes(data)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_checkpoint_from_another_configuration_is_refused(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["model"]["dim"] = 32  # other shapes
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointError, match=r"another model configuration \(model.dim: 16 vs 32\)"):
        load_model(RunFolder.open(copy))
    config["model"]["dim"] = 16
    config["model"]["moe"]["router"]["kind"] = "softmax_topk"  # same shapes, another model
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointError, match="model.moe.router.kind: 'noisy_topk' vs 'softmax_topk'"):
        load_model(RunFolder.open(copy))


def test_weights_of_other_shapes_are_refused(tmp_path):
    save_checkpoint(tmp_path / "m.safetensors", small_model(dim=16), {})
    with pytest.raises(CheckpointError, match="another model configuration"):
        load_checkpoint(tmp_path / "m.safetensors", small_model(dim=8))


def test_cli_eval_of_a_truncated_checkpoint_exits_2(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    data = (copy / "best.safetensors").read_bytes()
    (copy / "best.safetensors").write_bytes(data[: len(data) - 100])
    assert main(["eval", str(copy)]) == 2
    assert "best.safetensors is not a readable multimoe checkpoint" in capsys.readouterr().err


def test_training_state_round_trip_restores_model_optimizer_and_rng(tmp_path):
    model = small_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    for _ in range(2):
        opt.zero_grad()
        sum(p.square().sum() for p in model.parameters()).backward()
        opt.step()
    torch.manual_seed(123)
    save_training_state(tmp_path / "s.safetensors", model, opt, {"progress": {"epoch": 4}})
    expected_draw = torch.rand(3)
    expected_opt = opt.state_dict()

    other = small_model()
    other_opt = torch.optim.Adam(other.parameters(), lr=5.0, fused=True)
    torch.manual_seed(999)
    meta = load_training_state(tmp_path / "s.safetensors", other, other_opt)
    assert meta["progress"] == {"epoch": 4} and meta["kind"] == "training_state"
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where it was saved
    for name, tensor in model.state_dict().items():
        assert torch.equal(other.state_dict()[name], tensor)
    got = other_opt.state_dict()
    assert got["param_groups"][0]["lr"] == 1e-2
    for idx, state in expected_opt["state"].items():
        for key, value in state.items():
            assert torch.equal(got["state"][idx][key], value)
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        load_checkpoint(tmp_path / "s.safetensors")
    save_checkpoint(tmp_path / "m.safetensors", model, {})
    with pytest.raises(CheckpointError, match="not a training state"):
        load_training_state(tmp_path / "m.safetensors", other, other_opt)
