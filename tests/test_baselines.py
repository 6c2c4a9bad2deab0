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
    assert model.costs()["flops_per_sample"] > 0


def test_hgb_counts_one_comparison_per_tree_and_level():
    from types import SimpleNamespace

    from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE

    def tree(depths):
        nodes = np.zeros(len(depths), dtype=PREDICTOR_RECORD_DTYPE)
        nodes["depth"] = depths
        return SimpleNamespace(nodes=nodes)

    model = HGB(ModelConfig(arch="hgb"), seed=0)  # a stump, and a tree whose deepest leaf is two levels down
    model.estimator = SimpleNamespace(_predictors=[[tree([0, 1, 1])], [tree([0, 1, 1, 2, 2])]])
    assert model.costs() == {"parameters": 8, "active_parameters": 8, "flops_per_sample": 3}


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


# ---- modalities of other kinds ---------------------------------------------------------------------------------


def test_series_summary_against_statistics_worked_by_hand():
    from multimoe.baselines import SUMMARY, series_summary

    nan = np.nan
    values = np.array([[[1.0, nan, 3.0, 5.0], [nan, nan, nan, nan], [nan, 2.0, nan, nan]]])  # 1 row, 3 channels
    got = series_summary(values).reshape(3, len(SUMMARY))
    # channel 0 observes 1, 3, 5 at steps 0, 2, 3: quantiles interpolate linearly between them; changes 1->3, 3->5
    expected = [3.0, np.sqrt(8 / 3), 1.0, 5.0, 1.4, 2.0, 3.0, 4.0, 4.6, 35 / 3, 2.0, 0.75]
    np.testing.assert_allclose(got[0], expected)
    assert np.isnan(got[1, :-1]).all() and got[1, -1] == 0.0  # nothing observed: NaN statistics, observed share 0
    np.testing.assert_allclose(got[2], [2, 0, 2, 2, 2, 2, 2, 2, 2, 4, nan, 0.25])  # one observation: no change


def kinds_data(tmp_path, entry: str, **cfg):
    """The test split of a table with one column modality and one source modality, prepared."""
    from conftest import write_kinds_table

    from multimoe.data.table import load_spec

    spec = "path: table.csv\nlabel: y\nmodalities:\n  lab: [a1]\n  " + entry + "\n"
    table = load_spec(write_kinds_table(tmp_path, spec=spec))
    return prepare(table, DataConfig(**cfg), seed=0)


def test_an_embedding_is_columns_standardised_with_training_statistics(tmp_path):
    s = kinds_data(tmp_path, "emb: {kind: embedding, file: emb.npy}")
    emb = np.load(tmp_path / "emb.npy").astype(np.float64)
    data = s.test
    nans = design_matrix(data, nan_missing=True)
    source = data.sources["emb"]
    expected = (emb[data.rows_N] - source.mean_F) / source.std_F
    expected[~data.present_NM[:, 1].numpy()] = np.nan
    np.testing.assert_allclose(nans[:, 1:], expected, rtol=1e-5)
    zeros = design_matrix(data, nan_missing=False)
    np.testing.assert_allclose(zeros[:, 1:], np.nan_to_num(expected, nan=0.0), rtol=1e-5)


@pytest.mark.parametrize("entry, key", [
    ("vitals: {kind: series, table: vitals.csv, id: pid, time: t, channel: ch, value: v}", "model.baseline_series"),
    ("scan: {kind: image, column: scan, root: images}", "model.baseline_image"),
    ("notes: {kind: text, column: note}", None),
])  # fmt: skip
def test_raw_signals_images_and_text_are_refused_unless_features_are_chosen(tmp_path, entry, key):
    from multimoe.config import ConfigError

    s = kinds_data(tmp_path, entry)
    with pytest.raises(ConfigError, match="logreg and hgb do not take raw signals, images or text") as e:
        HGB(ModelConfig(arch="hgb"), seed=0).fit(s.train)
    assert (key in str(e.value)) if key else "use a neural preset" in str(e.value)


def test_series_summary_and_flattened_images_feed_the_baselines(tmp_path):
    from multimoe.baselines import SUMMARY

    s = kinds_data(tmp_path / "a", "vitals: {kind: series, table: vitals.csv, id: pid, time: t, channel: ch, value: v}")
    cfg = ModelConfig(arch="hgb", baseline_series="summary")
    X = design_matrix(s.test, nan_missing=True, cfg=cfg)
    assert X.shape == (len(s.test), 1 + 2 * len(SUMMARY))
    x, missing = s.test.sources["vitals"].batch(s.test.rows_N[:1])
    hr = np.where(missing[0, 0].numpy(), np.nan, x.values_BVU[0, 0].numpy())
    if s.test.present_NM[0, 1]:
        assert X[0, 1] == pytest.approx(np.nanmean(hr), rel=1e-5)  # channel hr's mean comes first
    flat = design_matrix(s.test, True, ModelConfig(arch="hgb", baseline_series="flatten"))
    assert flat.shape[1] == 1 + 2 * s.schema.inputs[1].shape[1]
    images = kinds_data(tmp_path / "b", "scan: {kind: image, column: scan, root: images}")
    pixels = design_matrix(images.test, True, ModelConfig(arch="logreg", baseline_image="flatten"))
    assert pixels.shape[1] == 1 + 64 and np.isnan(pixels[~images.test.present_NM[:, 1].numpy(), 1:]).all()
    model = HGB(ModelConfig(arch="hgb", baseline_image="flatten", hgb_max_iter=5), seed=0).fit(images.train)
    assert np.isfinite(evaluate(model, images.test)["loss"])
