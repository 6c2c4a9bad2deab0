import numpy as np
import pytest
import torch

from multimoe.baselines import HGB, LogReg, design_matrix
from multimoe.config import DataConfig, ModelConfig
from multimoe.data.prepare import prepare
from multimoe.data.table import build_table
from multimoe.evaluate import evaluate
from multimoe.runs.checkpoint import load_checkpoint, save_checkpoint


def splits():
    return prepare(build_table(DataConfig(name="synthetic")), DataConfig(name="synthetic", missing="mcar:0.4"), 0)


def test_design_matrix_marks_absent_modalities():
    s = splits()
    zeros, nans = design_matrix(s.test, nan_missing=False), design_matrix(s.test, nan_missing=True)
    absent = ~s.test.present_NM[:, 0].numpy()
    F0 = s.schema.features[0]
    assert np.isnan(nans[absent, :F0]).all() and (zeros[absent, :F0] == 0).all()
    assert not np.isnan(nans[~absent, :F0]).any()


def test_logreg_and_hgb_beat_chance_and_report_costs():
    s = splits()
    for cls in (LogReg, HGB):
        model = cls(ModelConfig(arch=cls.__name__.lower()), seed=0).fit(s.train)
        result = evaluate(model, s.test)
        assert result["overall"]["accuracy"] > 0.5  # chance 0.25
        assert model.costs()["parameters"] > 0
        assert np.isfinite(result["loss"])
    assert model.costs()["flops_per_sample"] is None


def test_late_fusion_averages_the_present_modalities():
    from multimoe.batch import combination_index
    from multimoe.model import build_model

    s = splits()
    cfg = ModelConfig(arch="late_fusion", dim=8, tokens=2, dropout=0.0)
    model = build_model(cfg, s.schema).eval()
    batch = s.test.batch(torch.arange(6))
    probs = model(batch).logits_BC.exp()
    torch.testing.assert_close(probs.sum(1), torch.ones(6))
    only0 = batch.present_BM.clone()
    only0[:] = False
    only0[:, 0] = True
    single = batch.with_presence(only0)
    assert torch.equal(single.combo_B, combination_index(only0))
    enc = model.encoders["m0"](single.inputs["m0"], single.cell_missing["m0"]).flatten(1)
    torch.testing.assert_close(model(single).logits_BC.exp(), model.heads["m0"](enc).softmax(-1))


def test_late_fusion_averages_over_two_or_more_present_modalities():
    from multimoe.model import build_model

    s = splits()
    model = build_model(ModelConfig(arch="late_fusion", dim=8, tokens=2, dropout=0.0), s.schema).eval()
    batch = s.test.batch(torch.arange(8))
    present = torch.tensor([[True, True, False, False], [True, False, True, True], [True, True, True, True]] * 2
                           + [[False, True, False, True]] * 2)  # fmt: skip
    batch = batch.with_presence(present)
    # each modality's own classifier, then the plain mean of the present ones' probabilities
    probs_MBC = torch.stack(
        [
            model.heads[m](model.encoders[m](batch.inputs[m], batch.cell_missing[m]).flatten(1)).softmax(-1)
            for m in s.schema.modalities
        ]  # fmt: skip
    )
    for b in range(8):
        expected = probs_MBC[present[b], b].mean(dim=0)
        torch.testing.assert_close(model(batch).logits_BC[b].exp(), expected)
    assert not torch.allclose(probs_MBC[0, 0], probs_MBC[1, 0])  # the modalities disagree: the mean matters


@pytest.mark.parametrize("cls", [LogReg, HGB])
@pytest.mark.parametrize("missing", ["mcar:0.4", "natural"])
def test_saved_arrays_predict_as_the_fitted_estimator(cls, missing, tmp_path):
    """A baseline is saved as arrays (no pickle); rebuilt from the safetensors file it gives scikit-learn's
    probabilities to 1e-12, binary (natural: 2 classes) and multiclass (4 classes)."""
    classes = 2 if missing == "natural" else 4
    cfg = DataConfig(name="synthetic", missing=missing)
    cfg.synthetic.classes, cfg.synthetic.samples = classes, 400
    s = prepare(build_table(cfg), cfg, 0)
    model = cls(ModelConfig(arch=cls.__name__.lower(), hgb_max_iter=20), seed=0).fit(s.train)
    expected = model.predict(s.test).probs_NC
    save_checkpoint(tmp_path / "best.safetensors", model, {})
    loaded = cls(ModelConfig(arch=cls.__name__.lower()), seed=0)
    loaded.load_state_dict(load_checkpoint(tmp_path / "best.safetensors")[0])
    assert not hasattr(loaded.estimator, "fit")  # predicts from the arrays, not from a scikit-learn object
    got = loaded.predict(s.test).probs_NC
    assert got.shape == (len(s.test), classes)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
