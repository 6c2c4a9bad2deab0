import json

import torch
from conftest import tiny_config
from safetensors.torch import load_file

from multimoe.config import TrainConfig
from multimoe.train import epoch_order, train


def test_short_training_lowers_the_loss(tmp_path):
    cfg = tiny_config(tmp_path, "train.epochs=8")
    result = train(cfg)
    lines = [json.loads(s) for s in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 8
    assert lines[-1]["train_loss"] < 0.8 * lines[0]["train_loss"]
    assert result.test["overall"]["accuracy"] > 0.4  # chance is 0.25


def test_run_folder_contents(tmp_path):
    result = train(tiny_config(tmp_path))
    names = {p.name for p in result.run_dir.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "best.safetensors", "summary.json"} <= names
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["test"]["overall"]["n"] > 0
    assert summary["best_epoch"] == result.best_epoch
    assert {r["size"] for r in summary["test"]["per_size"]} <= {1, 2, 3}
    assert sum(r["n"] for r in summary["test"]["per_combination"]) == summary["test"]["overall"]["n"]


def epoch_lines(run_dir) -> list[dict]:
    return [{k: v for k, v in json.loads(s).items() if k != "seconds"} for s in (run_dir / "metrics.jsonl").open()]


def test_same_seed_same_metrics_on_cpu(tmp_path):
    # dropout on: its masks and the noisy gate's noise draw from the seeded global RNG
    a = train(tiny_config(tmp_path / "a", "model.dropout=0.3"))
    b = train(tiny_config(tmp_path / "b", "model.dropout=0.3"))
    c = train(tiny_config(tmp_path / "c", "model.dropout=0.3", "seed=1"))
    assert a.test == b.test and a.val == b.val  # overall, per combination and per size, bit for bit
    assert epoch_lines(a.run_dir) == epoch_lines(b.run_dir)  # every epoch's losses and validation metrics
    assert (a.run_dir / "routing.jsonl").read_text() == (b.run_dir / "routing.jsonl").read_text()
    wa, wb = load_file(a.run_dir / "best.safetensors"), load_file(b.run_dir / "best.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [e["train_loss"] for e in epoch_lines(a.run_dir)] != [e["train_loss"] for e in epoch_lines(c.run_dir)]
    assert a.test["overall"] != c.test["overall"] or a.val != c.val


def test_curriculum_sorts_warmup_epochs_then_shuffles():
    n_present = torch.tensor([1, 3, 2, 3, 1, 2])
    cfg = TrainConfig(warmup_epochs=2, order="descending")
    first = epoch_order(1, n_present, cfg, seed=0)  # epochs count from 1
    assert first.tolist() == [1, 3, 2, 5, 0, 4]  # stable sort, descending
    assert torch.equal(first, epoch_order(2, n_present, cfg, seed=0))  # unshuffled warm-up
    asc = epoch_order(1, n_present, TrainConfig(warmup_epochs=2, order="ascending"), seed=0)
    assert n_present[asc].tolist() == sorted(n_present.tolist())
    later = [epoch_order(e, n_present, cfg, seed=0) for e in (3, 4)]
    assert all(sorted(o.tolist()) == list(range(6)) for o in later)
    assert torch.equal(later[0], epoch_order(3, n_present, cfg, seed=0))  # pure function of (epoch, seed)
