"""A non-finite loss or gradient stops training with a message naming the step; the last good checkpoints load."""

import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from multimoe.cli import main
from multimoe.errors import NonFiniteError
from multimoe.guard import FiniteGuard
from multimoe.model import build_model
from multimoe.runs.checkpoint import load_training_state
from multimoe.runs.folder import RunFolder
from multimoe.runs.reopen import load_model
from multimoe.train import train

STEPS = 6  # tiny_config: 168 training rows in batches of 32


def break_step(monkeypatch, epoch: int, step: int, kind: str) -> None:
    """Make the training loss of (epoch, step), both from 1, NaN (``loss``) or its gradient NaN (``grad``)."""
    real = F.cross_entropy
    calls = {"n": 0}

    def cross_entropy(logits, labels, *args, **kw):
        loss = real(logits, labels, *args, **kw)
        calls["n"] += 1
        if calls["n"] != (epoch - 1) * STEPS + step:
            return loss
        if kind == "loss":
            return loss * float("nan")
        total = logits.sum()
        return loss + 0.0 * torch.sqrt(total - total.detach())  # value 0, gradient 0 * inf = NaN

    # the training loop's task loss only (the gate losses call cross_entropy too)
    monkeypatch.setattr(sys.modules["multimoe.train"], "F", types.SimpleNamespace(cross_entropy=cross_entropy))


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_non_finite_step_stops_training_naming_it(tmp_path, monkeypatch, kind):
    break_step(monkeypatch, epoch=2, step=4, kind=kind)
    with pytest.raises(NonFiniteError, match=r"epoch 2, step 4 of 6") as info:
        train(tiny_config(tmp_path, "train.epochs=3"))
    assert ("loss nan" if kind == "loss" else "gradient norm nan") in str(info.value)
    assert "the checkpoints of epoch 1 (the last completed) are kept" in str(info.value)
    (run_dir,) = tmp_path.iterdir()
    assert [json.loads(s)["epoch"] for s in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1]
    cfg, model = load_model(RunFolder.open(run_dir))  # the best checkpoint (epoch 1) is intact and loads
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())
    fresh = build_model(cfg.model, model.schema)
    meta = load_training_state(run_dir / "state.safetensors", fresh, torch.optim.Adam(fresh.parameters()))
    assert meta["progress"]["epoch"] == 1
    assert not (run_dir / "summary.json").exists()


def test_cli_exits_2_on_divergence(tmp_path, capsys):
    code = main(["train", "configs/flexmoe.yaml", f"out_dir={tmp_path}", "data.synthetic.samples=200",
                 "model.dim=8", "model.tokens=2", "model.heads=2", "model.moe.hidden=8", "model.moe.router.top_k=2",
                 "train.epochs=2", "train.batch_size=32", "train.progress=false", "train.lr=1e38"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "error: non-finite" in err and "epoch 1, step" in err and "Lower train.lr" in err
    assert "no epoch had completed, so there is no checkpoint" in err


def test_guard_records_the_first_bad_step_and_reads_it_later():
    guard = FiniteGuard(torch.device("cpu"), steps_per_epoch=10, every=4)  # as on an accelerator: read every 4 steps
    one = torch.tensor(1.0)
    guard.observe(1, 1, one, one)
    guard.observe(1, 2, one, torch.tensor(float("inf")))
    guard.observe(1, 3, torch.tensor(float("nan")), one)  # later fault: the first one is reported
    with pytest.raises(NonFiniteError, match=r"gradient norm inf \(loss 1\) at epoch 1, step 2 of 10"):
        guard.observe(1, 4, one, one)
