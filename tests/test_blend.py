"""model.blend=hgb (multimoe/blend.py): the trees walked in torch give scikit-learn's gradient boosting
probabilities, the network's weight is the validation log loss's choice, and a blended run predicts, reloads and
exports as one model whose probabilities are w * the network's + (1 - w) * those of the hgb preset's trees."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from test_predict import TINY, cli, patients, train_run, write_table

from multimoe.baselines import HGB
from multimoe.batch import Batch, combination_index
from multimoe.blend import Trees, fit_blend
from multimoe.config import ConfigError
from multimoe.data.dataset import DataSchema
from multimoe.evaluate import evaluate
from multimoe.model import ModelOutput
from multimoe.predict import load_predictor
from multimoe.registry import load_config
from multimoe.runs.reopen import open_run
from multimoe.train import train


def trees_probs(model, data) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model.trees(b).numpy() for b in data.batches(64)])


@pytest.mark.parametrize("classes", [2, 3])
def test_the_trees_give_gradient_boostings_probabilities(classes, tmp_path):
    """Missing cells and absent modalities (NaN both), a one-hot category and, with 2 classes, the logistic link."""
    df = patients(240)
    df["y"] %= classes
    spec = write_table(tmp_path, df)
    args = ["train", "configs/multimoe.yaml", f"data.spec={spec}", f"out_dir={tmp_path / 'runs'}", *TINY,
            "train.epochs=1", "model.blend=hgb", "data.missing=mcar:0.4"]  # fmt: skip
    code, out, err = cli(*args)
    assert code == 0, err
    run = open_run(json.loads(out.splitlines()[-1])["run_dir"])
    hgb = HGB(run.cfg.model, run.cfg.seed).fit(run.splits.train)
    for data in (run.splits.val, run.splits.test):
        assert (~data.present_NM).any() and any(m.any() for m in data.cell_missing.values())
        np.testing.assert_allclose(trees_probs(run.model, data), hgb.predict(data).probs_NC, atol=1e-12, rtol=0)


def test_a_hand_made_forest():
    """Two trees on a binary task: a stump on modality b's column (x <= 0.5 left, as scikit-learn splits; NaN, from
    a missing cell or an absent modality, right) and a lone leaf; raw score 0.25 + leaf values, then the logistic."""
    schema = DataSchema(("a", "b"), (1, 1), ("no", "yes"))
    arrays = {"baseline": np.array([0.25]), "tree_start": np.array([0, 3]), "feature": np.array([1, 0, 0, 0]),
              "threshold": np.array([0.5, 0, 0, 0]), "missing_left": np.zeros(4, dtype=bool),
              "left": np.array([1, 0, 0, 0]), "right": np.array([2, 0, 0, 0]),
              "is_leaf": np.array([False, True, True, True]), "value": np.array([0.0, -1.0, 2.0, 0.5]),
              "classes": np.array([0, 1])}  # fmt: skip
    trees = Trees(schema).set_arrays(arrays)
    assert trees.depth == 1
    b = torch.tensor([[0.5], [0.7], [0.0], [0.0], [-3.0]])
    present = torch.tensor([[True, True]] * 3 + [[True, False], [True, True]])
    batch = Batch({"a": torch.zeros(5, 1), "b": b}, {"a": torch.zeros(5, 1, dtype=torch.bool),
                  "b": torch.tensor([[False], [False], [True], [False], [False]])}, present,
                  torch.zeros(5, dtype=torch.long), combination_index(present))  # fmt: skip
    left, right = 0.25 - 1.0 + 0.5, 0.25 + 2.0 + 0.5  # equal to the threshold, below it: left; above, NaN: right
    p1 = 1 / (1 + np.exp(-np.array([left, right, right, right, left])))
    np.testing.assert_allclose(trees(batch).numpy(), np.stack([1 - p1, p1], axis=1), rtol=0, atol=1e-15)


class Oracle(torch.nn.Module):
    """A stand-in network that reads the label: right (``shift`` 0) or wrong (1) with probability ~1."""

    def __init__(self, cfg, schema, shift: int) -> None:
        super().__init__()
        self.cfg, self.schema, self.shift = cfg, schema, shift

    def forward(self, batch) -> ModelOutput:
        wrong = (batch.labels_B + self.shift) % self.schema.num_classes
        logits = 30.0 * F.one_hot(wrong, self.schema.num_classes).float()
        return ModelOutput(logits, logits.new_zeros(()), [], None)


@pytest.mark.parametrize("shift,weight", [(0, 1.0), (1, 0.0)])
def test_the_weight_is_validations_choice(shift, weight, tmp_path):
    """A network that is always right takes all the weight; one that is always wrong none (any w > 0 lowers the
    true class's probability). At w = 0 the validation log loss is gradient boosting's own."""
    cfg = tiny_config(tmp_path, "model.blend=hgb")
    result = train(load_config(None, [f"out_dir={tmp_path}", "model.arch=hgb", "data.synthetic.modalities=3",
                                      "data.synthetic.features=8", "data.synthetic.samples=240",
                                      "data.synthetic.classes=4", "data.missing=mcar:0.3"]))  # fmt: skip
    splits = result.splits
    network = Oracle(cfg.model, splits.schema, shift)
    blend, chosen = fit_blend(network, cfg.model, cfg.seed, splits.train, splits.val, 64, "cpu")
    assert chosen["weight"] == weight and float(blend.weight) == weight
    assert chosen["val_log_loss"][0.0] == pytest.approx(result.model.predict(splits.val).loss, rel=1e-6)
    # right: -log(1 / (1 + 3 e^-30)) ~ 0; wrong: e^-30 / (1 + 3 e^-30) is below the clip, -log(1e-12)
    assert chosen["val_log_loss"][1.0] == pytest.approx(0.0 if shift == 0 else -math.log(1e-12), abs=1e-6)


@pytest.fixture(scope="module")
def blended(tmp_path_factory) -> tuple[str, Path]:
    folder = tmp_path_factory.mktemp("blend")
    return train_run(folder, "multimoe", "model.blend=hgb", "data.missing=mcar:0.4", "train.epochs=1"), folder


def test_a_blended_run_predicts_the_blend_of_its_network_and_the_hgb_presets_trees(blended, tmp_path):
    run, _ = blended
    summary = json.loads((Path(run) / "summary.json").read_text())
    (note,) = [n for n in summary["notes"] if n.startswith("blend: ")]
    w = float(note.split()[1])
    predictor = load_predictor(run)
    assert float(predictor.model.weight) == w
    df = patients(60, seed=5)
    probs = predictor.predict_proba(df)
    predictor.model.weight.fill_(1.0)
    network = predictor.predict_proba(df)
    predictor.model.weight.fill_(0.0)
    trees = predictor.predict_proba(df)
    np.testing.assert_allclose(probs, w * network + (1 - w) * trees, atol=1e-6)
    # the same seed, table and protocol give the hgb preset the same training split: the same trees
    hgb_run = train_run(tmp_path, "hgb", "data.missing=mcar:0.4")
    np.testing.assert_allclose(trees, load_predictor(hgb_run).predict_proba(df), atol=1e-6)
    opened = open_run(run)  # the reloaded run evaluates as the run did
    assert evaluate(opened.model, opened.splits.test)["overall"] == summary["test"]["overall"]


def test_a_blended_run_exports(blended):
    from test_export import check_every_combination

    run, folder = blended
    code, _, err = cli("export", run, "--format", "onnx", "--out", str(folder / "model.onnx"))
    assert code == 0, err
    assert check_every_combination(run, folder / "model.onnx") >= 5


def test_a_baseline_cannot_be_blended():
    with pytest.raises(ConfigError, match="model.blend=hgb blends a neural model"):
        load_config("configs/hgb.yaml", ["model.blend=hgb"])
