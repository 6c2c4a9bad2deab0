import json
import sys

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file
from test_model import ALL_PRESENCE3, SCHEMA3, make_batch, small_cfg

from multimoe.batch import combination_index, drop_modalities
from multimoe.config import TrainConfig
from multimoe.evaluate import evaluate
from multimoe.model import build_model, resolve
from multimoe.runs.checkpoint import load_checkpoint, read_meta
from multimoe.train import epoch_order, train, train_step

train_mod = sys.modules["multimoe.train"]  # the package exports the function `train` under the module's name


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
    assert summary["test"]["overall"]["n"] == 36  # 15 % of 240 rows
    assert summary["test"] == result.test and summary["epochs_run"] == 3
    lines = epoch_lines(result.run_dir)
    assert [line["epoch"] for line in lines] == [1, 2, 3]  # epochs count from 1
    best = max(lines, key=lambda line: line["val_accuracy"])  # the first epoch with the highest value
    assert summary["best_epoch"] == result.best_epoch == best["epoch"]
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


def scripted_validation(monkeypatch, values: list[float], select: str) -> None:
    """The validation metric ``select`` of epochs 1, 2, ... becomes ``values`` (the model trains as usual; the
    evaluations after training, of the selected checkpoint, stay real)."""
    real = train_mod.evaluate
    script = iter(values)

    def evaluate(model, data, *args, **kw):
        result = real(model, data, *args, **kw)
        value = next(script, None)
        if value is not None:
            if select == "loss":
                result["loss"] = value
            else:
                result["overall"][select] = value
        return result

    monkeypatch.setattr(train_mod, "evaluate", evaluate)


@pytest.mark.parametrize(
    "select, values, best, flags",
    [
        ("accuracy", [0.5, 0.7, 0.6, 0.7], 2, [True, True, False, False]),  # a tie does not replace the best
        ("f1", [0.2, 0.1, 0.3, 0.25], 3, [True, False, True, False]),
        ("loss", [1.0, 0.6, 0.9, 0.7], 2, [True, True, False, False]),  # lower is better
        ("loss", [1.0, 0.8, 0.9, 0.7], 4, [True, True, False, True]),
    ],
)
def test_best_epoch_is_the_best_validation_value(tmp_path, monkeypatch, select, values, best, flags):
    scripted_validation(monkeypatch, values, select)
    result = train(tiny_config(tmp_path, "train.epochs=4", f"train.select={select}"))
    assert result.best_epoch == best and result.summary["best_epoch"] == best
    assert [line["best"] for line in epoch_lines(result.run_dir)] == flags
    assert read_meta(result.run_dir / "best.safetensors")["epoch"] == best


def test_patience_stops_after_that_many_epochs_without_improvement(tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [0.5, 0.7, 0.6, 0.65, 0.9, 0.95], "accuracy")
    result = train(tiny_config(tmp_path, "train.epochs=6", "train.patience=2"))
    assert result.summary["epochs_run"] == 4 and result.best_epoch == 2  # epochs 3 and 4 bring nothing
    assert len(epoch_lines(result.run_dir)) == 4


def test_test_metrics_come_from_the_selected_checkpoint(tmp_path, monkeypatch):
    """Epoch 1 is selected: the reported test metrics are those of its weights, not of the last epoch's."""
    scripted_validation(monkeypatch, [0.9, 0.1, 0.1], "accuracy")
    last = {}
    real_save = train_mod.resume.save_progress

    def save_progress(folder, model, optimizer, progress, meta):
        last.update({k: v.clone() for k, v in model.state_dict().items()})
        return real_save(folder, model, optimizer, progress, meta)

    monkeypatch.setattr(train_mod.resume, "save_progress", save_progress)
    cfg = tiny_config(tmp_path, "train.epochs=3", "model.dropout=0.0")
    result = train(cfg)
    assert result.best_epoch == 1
    fresh = build_model(result.model.cfg, result.model.schema)
    load_checkpoint(result.run_dir / "best.safetensors", fresh)
    assert evaluate(fresh, result.splits.test)["overall"] == result.test["overall"]
    fresh.load_state_dict(last)  # the last epoch's weights score differently on the test split
    assert evaluate(fresh, result.splits.test)["loss"] != result.test["loss"]


def tiny_model_and_batch(**settings):
    """A deterministic tiny fusion model (no dropout, no router noise) and a training batch of every combination."""
    cfg, _ = resolve(small_cfg(kind="softmax_topk", **settings), SCHEMA3)
    cfg.dropout = 0.0
    torch.manual_seed(0)
    return build_model(cfg, SCHEMA3), make_batch(SCHEMA3, torch.cat([ALL_PRESENCE3, ALL_PRESENCE3]))


def grads_after_step(t: TrainConfig, **settings) -> dict[str, torch.Tensor]:
    """Parameter gradients left by one train_step (plain SGD with lr 0: the step changes no weight)."""
    model, batch = tiny_model_and_batch(**settings)
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, t)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def total_norm(grads: dict[str, torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()])))


def test_grad_clip_scales_the_gradient_to_the_clip_norm():
    raw = grads_after_step(TrainConfig(grad_clip=0.0))
    norm = total_norm(raw)
    clipped = grads_after_step(TrainConfig(grad_clip=norm / 4))
    assert total_norm(clipped) == pytest.approx(norm / 4, rel=1e-4)
    for name, g in raw.items():  # the direction is kept: every gradient scaled by the same factor
        torch.testing.assert_close(clipped[name], g / 4, rtol=1e-4, atol=1e-7)
    loose = grads_after_step(TrainConfig(grad_clip=norm * 10))  # above the norm: nothing changes
    assert all(torch.equal(loose[n], raw[n]) for n in raw)


def test_gate_loss_weight_scales_the_router_losses_gradient():
    g0, g1, g3 = (grads_after_step(TrainConfig(gate_loss_weight=w)) for w in (0.0, 1.0, 3.0))
    router = "layers.0.ffn.router.weight_GJD"
    assert not torch.allclose(g1[router], g0[router])  # the router loss reaches the router
    for name in g0:  # gradients are linear in the weight: g(3) - g(0) = 3 (g(1) - g(0))
        torch.testing.assert_close(g3[name] - g0[name], 3 * (g1[name] - g0[name]), rtol=1e-4, atol=1e-6)


def test_modality_dropout_hides_modalities_before_the_forward(monkeypatch):
    model, batch = tiny_model_and_batch()
    seen = []
    real_forward = model.forward
    monkeypatch.setattr(model, "forward", lambda b: seen.append(b) or real_forward(b))
    torch.manual_seed(3)
    expected = drop_modalities(batch.present_BM, 0.5)
    torch.manual_seed(3)
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, TrainConfig(modality_dropout=0.5))
    (shown,) = seen
    assert torch.equal(shown.present_BM, expected)  # the same seeded draw as drop_modalities
    assert (shown.present_BM <= batch.present_BM).all() and shown.present_BM.any(dim=1).all()
    assert shown.present_BM.sum() < batch.present_BM.sum()  # some modality was hidden
    hidden = batch.present_BM & ~shown.present_BM
    for m, name in enumerate(SCHEMA3.modalities):  # a hidden modality's inputs are zeros, its combination updated
        assert (shown.inputs[name][hidden[:, m]] == 0).all()
    assert torch.equal(shown.combo_B, combination_index(shown.present_BM))
    seen.clear()
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, TrainConfig(modality_dropout=0.0))
    assert seen[0] is batch  # no dropout: the batch as given
