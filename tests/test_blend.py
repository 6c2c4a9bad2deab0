"""model.blend=hgb (multimoe/blend.py): the trees walked in torch give scikit-learn's gradient boosting
probabilities, the network's weight is the validation log loss's choice, and a blended run predicts, reloads and
exports as one model whose probabilities are w * the network's + (1 - w) * those of the hgb preset's trees."""

import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from sklearn.svm import SVC
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
from multimoe.report import routing_report_frames
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


def hand_made_forest() -> Trees:
    """Two trees on a binary task: a stump on modality b's column (x <= 0.5 left, as scikit-learn splits; NaN, from
    a missing cell or an absent modality, right) and a lone leaf; raw score 0.25 + leaf values."""
    schema = DataSchema(("a", "b"), (1, 1), ("no", "yes"))
    arrays = {"baseline": np.array([0.25]), "tree_start": np.array([0, 3]), "feature": np.array([1, 0, 0, 0]),
              "threshold": np.array([0.5, 0, 0, 0]), "missing_left": np.zeros(4, dtype=bool),
              "left": np.array([1, 0, 0, 0]), "right": np.array([2, 0, 0, 0]),
              "is_leaf": np.array([False, True, True, True]), "value": np.array([0.0, -1.0, 2.0, 0.5]),
              "classes": np.array([0, 1])}  # fmt: skip
    return Trees(schema).set_arrays(arrays)


def test_a_hand_made_forest():
    """``hand_made_forest``'s probabilities: the logistic of 0.25 + the two trees' leaf values."""
    trees = hand_made_forest()
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


# ---------------------------------------------------------------------------------------------------------------
# model.blend=hgb+svm: a product of per-modality support-vector machines as a third member

needs_svc_probability = pytest.mark.skipif(
    "probability" not in inspect.signature(SVC).parameters,
    reason="this scikit-learn's SVC has no probability=True (gone in 1.11) to compare the machines' Platt fit with",
)


def patients_splits(tmp_path, classes: int):
    """The training and test splits of a one-epoch run on ``patients`` with ``classes`` classes, mcar:0.4."""
    df = patients(240)
    df["y"] %= classes
    spec = write_table(tmp_path, df)
    code, out, err = cli("train", "configs/multimoe.yaml", f"data.spec={spec}", f"out_dir={tmp_path / 'runs'}", *TINY,
                         "train.epochs=1", "data.missing=mcar:0.4")  # fmt: skip
    assert code == 0, err
    splits = open_run(json.loads(out.splitlines()[-1])["run_dir"]).splits
    return splits.train, splits.test


@needs_svc_probability
@pytest.mark.filterwarnings("ignore::FutureWarning")  # the refit SVC's probability=True: deprecated in scikit-learn 1.9
@pytest.mark.parametrize("classes", [2, 3])
def test_the_machines_are_scikit_learns_svms(classes, tmp_path):
    """Each modality's machine, refit here with scikit-learn on the training rows that have the modality (the same
    kernel width, C and seed): its decision values equal ``decision_function`` (one-vs-one; libsvm's sign, which
    scikit-learn flips for two classes). Its probabilities are Platt's sigmoid of them with scikit-learn's A and B;
    ``predict_proba`` (libsvm's own probability path) is within 0.005 of that with two classes, and with three its
    iterative coupling agrees with the closed form on the most probable class of nearly every row."""
    from multimoe.blend import SVM_C, Product

    train_data, test_data = patients_splits(tmp_path, classes)
    product = Product(train_data.schema).fit(train_data, seed=3)
    agree = []
    for i, name in enumerate(train_data.schema.modalities):
        has = train_data.present_NM[:, i].numpy()
        x = np.where(train_data.cell_missing[name].numpy(), 0.0, train_data.values[name].numpy())[has]
        svm = SVC(
            C=SVM_C,
            gamma=float(getattr(product, f"gamma{i}")),
            probability=True,
            random_state=3,
            decision_function_shape="ovo",
        )
        svm.fit(x.astype(np.float64), train_data.labels_N.numpy()[has])
        x_test = np.where(test_data.cell_missing[name].numpy(), 0.0, test_data.values[name].numpy()).astype(float)
        ours = product.decisions(i, torch.from_numpy(x_test)).numpy()
        theirs = svm.decision_function(x_test).reshape(len(x_test), -1)
        np.testing.assert_allclose(ours, theirs if classes > 2 else -theirs, atol=1e-9, rtol=0)
        probs = product.machine(i, torch.from_numpy(x_test)).numpy()
        if classes == 2:
            np.testing.assert_allclose(probs, svm.predict_proba(x_test), atol=5e-3, rtol=0)
            libsvm = -theirs[:, 0]  # libsvm's decision: positive favours the first class
            r = 1 / (1 + np.exp(svm.probA_[0] * libsvm + svm.probB_[0]))  # Platt's sigmoid
            np.testing.assert_allclose(probs[:, 0], r, atol=1e-9, rtol=0)
        agree.append((probs.argmax(1) == svm.predict_proba(x_test).argmax(1)).mean())
    assert min(agree) >= 0.95


def test_platts_sigmoid_by_hand():
    """Decision values -1 (second class) and 1 (first): Platt's targets are 1/3 and 2/3, met exactly by
    1 / (1 + exp(A f + B)) with A = -ln 2, B = 0."""
    from multimoe.blend import platt

    a, b = platt(np.array([-1.0, 1.0]), np.array([False, True]))
    assert a == pytest.approx(-math.log(2), abs=1e-6) and b == pytest.approx(0.0, abs=1e-6)


@needs_svc_probability
@pytest.mark.filterwarnings("ignore::FutureWarning")  # the reference SVC's probability=True
@pytest.mark.parametrize("classes", [2, 3])
def test_without_svc_probabilities_the_machines_fit_platt_themselves(classes, tmp_path, monkeypatch):
    """Where SVC has no ``probability`` (scikit-learn >= 1.11) each machine's A and B come from its held-out decision
    values (libsvm's procedure, its own folds): the decisions are the same SVC's, and its probabilities differ from
    those with scikit-learn's A and B by less than 0.03 on average, and by less than twice as much as scikit-learn's
    own differ between two seeds (other folds; 0.008-0.026 here, ours 0.008-0.018)."""
    import multimoe.blend
    from multimoe.blend import Product

    def no_probability(**kwargs) -> SVC:
        if "probability" in kwargs:
            raise TypeError("SVC.__init__() got an unexpected keyword argument 'probability'")
        return SVC(**kwargs)

    train_data, test_data = patients_splits(tmp_path, classes)
    reference = Product(train_data.schema).fit(train_data, seed=3)
    other_folds = Product(train_data.schema).fit(train_data, seed=4)
    monkeypatch.setattr(multimoe.blend, "SVC", no_probability)
    own = Product(train_data.schema).fit(train_data, seed=3)
    for i, name in enumerate(train_data.schema.modalities):
        x = np.where(test_data.cell_missing[name].numpy(), 0.0, test_data.values[name].numpy())
        x = torch.from_numpy(x.astype(np.float64))
        np.testing.assert_allclose(own.decisions(i, x).numpy(), reference.decisions(i, x).numpy(), atol=1e-9)
        assert not torch.equal(getattr(own, f"prob_a{i}"), getattr(reference, f"prob_a{i}"))  # not the SVC's A
        ours, theirs = own.machine(i, x).numpy(), reference.machine(i, x).numpy()
        spread = np.abs(other_folds.machine(i, x).numpy() - theirs).mean()
        assert np.abs(ours - theirs).mean() < min(0.03, 2 * spread)


def hand_made_product():
    """Two modalities, three classes, training prior (0.5, 0.25, 0.25). Modality a's machine knows all three classes;
    its pairwise decisions are constants (no support vector weight), A = -1, B = 0, so r_ab = sigmoid(intercept):
    r_01 = 0.5, r_02 = 0.8, r_12 = 0.75. Modality b's machine knows classes 0 and 2 only, r_02 = 0.9."""
    from multimoe.blend import Product

    def machine(classes, r):
        pairs = [(a, b) for a in range(len(classes)) for b in range(a + 1, len(classes))]
        r = np.array(r)
        return {"sv": np.zeros((1, 2)), "coef": np.zeros((len(pairs), 1)), "intercept": np.log(r / (1 - r)),
                "prob_a": -np.ones(len(pairs)), "prob_b": np.zeros(len(pairs)), "gamma": np.asarray(1.0),
                "pair": np.array(pairs), "classes": np.array(classes)}  # fmt: skip

    product = Product(DataSchema(("a", "b"), (2, 2), ("x", "y", "z")))
    product.log_prior = torch.tensor(np.log([0.5, 0.25, 0.25]))
    for i, arrays in enumerate([machine([0, 1, 2], [0.5, 0.8, 0.75]), machine([0, 2], [0.9])]):
        for key, value in arrays.items():
            setattr(product, f"{key}{i}", torch.from_numpy(value))
    return product


def test_a_hand_made_product_of_machines():
    """a alone: 1 / (1/r_01 + 1/r_02 - 1) = 1 / 2.25, 1 / (1/(1 - r_01) + 1/r_12 - 1) = 3 / 7,
    1 / (1/(1 - r_02) + 1/(1 - r_12) - 1) = 1 / 8, normalised. b alone: 0.9, FLOOR (class 1: never seen), 0.1,
    normalised. Both: a x b / prior, normalised."""
    from multimoe.blend import FLOOR

    product = hand_made_product()
    a = np.array([1 / 2.25, 3 / 7, 1 / 8])
    a /= a.sum()
    b = np.array([0.9, FLOOR, 0.1])  # the machine's probabilities (0.9, 0.1 over its classes) and the floor
    prior = np.array([0.5, 0.25, 0.25])
    both = a * b / prior
    present = torch.tensor([[True, False], [False, True], [True, True]])
    batch = Batch({"a": torch.randn(3, 2), "b": torch.randn(3, 2)},
                  {m: torch.zeros(3, 2, dtype=torch.bool) for m in "ab"}, present, torch.zeros(3, dtype=torch.long),
                  combination_index(present))  # fmt: skip
    expected = np.stack([a, b / b.sum(), both / both.sum()])
    np.testing.assert_allclose(product(batch).numpy(), expected, rtol=1e-9, atol=0)


def test_a_blends_costs_count_its_fitted_members():
    """The hand-made forest: 4 nodes, 2 trees walked 1 level (2 comparisons). The hand-made machines: a holds one
    2-column support vector, 3 pairs (coefficients 3 x 1, intercepts, A and B: 3 each), 2 + 3 x 4 = 14 numbers and
    2 x 2 + 2 x 3 = 10 FLOPs; b one support vector and 1 pair, 2 + 4 = 6 numbers and 2 x 2 + 2 x 1 = 6 FLOPs. The
    network's own training FLOPs stay as they are."""
    from multimoe.blend import Blend

    product = hand_made_product()
    network = Oracle(None, DataSchema(("a", "b"), (2, 2), ("x", "y", "z")), 0)
    costs = Blend(network, hand_made_forest(), product=product).costs(
        {"parameters": 100, "active_parameters": 60, "flops_per_sample": 1000, "train_flops_per_sample": 3000}
    )
    assert costs == {"parameters": 124, "active_parameters": 84, "flops_per_sample": 1018,
                     "train_flops_per_sample": 3000}  # fmt: skip
    assert (
        Blend(network, hand_made_forest()).costs(
            {"parameters": 100, "active_parameters": 60, "flops_per_sample": 1000}
        )["flops_per_sample"]
        == 1002
    )


def test_a_blend_says_how_it_pools():
    from multimoe.blend import Blend

    network = Oracle(None, DataSchema(("a", "b"), (2, 2), ("x", "y", "z")), 0)
    three = Blend(network, hand_made_forest(), weight=0.3, product=hand_made_product(), product_weight=0.5,
                  geometric=True)  # fmt: skip
    assert three.describe() == ("0.3 x the network + 0.2 x gradient boosting + 0.5 x the per-modality machines' "
                                "product (weighted geometric mean)")  # fmt: skip
    two = Blend(network, hand_made_forest(), weight=1.0)
    assert two.describe() == "1.0 x the network + 0.0 x gradient boosting (weighted mean)"


@pytest.mark.parametrize("shift,weight", [(0, 1.0), (1, 0.0)])
def test_the_three_weights_are_validations_choice(shift, weight, tmp_path):
    """With the machines as a third member: a network that is always right takes all the weight; one that is always
    wrong none. The validation log loss of each pair (w, v) is that of w p_network + v p_machines + (1 - w - v) p_trees,
    and at (0, 0) it is gradient boosting's own."""
    cfg = tiny_config(tmp_path, "model.blend=hgb+svm")
    result = train(load_config(None, [f"out_dir={tmp_path}", "model.arch=hgb", "data.synthetic.modalities=3",
                                      "data.synthetic.features=8", "data.synthetic.samples=240",
                                      "data.synthetic.classes=4", "data.missing=mcar:0.3"]))  # fmt: skip
    splits = result.splits
    blend, chosen = fit_blend(Oracle(cfg.model, splits.schema, shift), cfg.model, cfg.seed, splits.train, splits.val,
                              64, "cpu")  # fmt: skip
    assert chosen["weight"] == weight and float(blend.weight) == weight
    if shift == 0:
        assert chosen["svm_weight"] == 0.0 and float(blend.product_weight) == 0.0
    losses = chosen["val_log_loss"]
    assert len(losses) == 66  # the pairs of the 0.1 grid with w + v <= 1
    assert losses["0.0,0.0"] == pytest.approx(result.model.predict(splits.val).loss, rel=1e-6)
    labels = splits.val.labels_N.numpy()
    with torch.no_grad():
        p_machines = torch.cat([blend.product(b) for b in splits.val.batches(64)]).numpy()
    assert losses["0.0,1.0"] == pytest.approx(-np.log(p_machines[np.arange(len(labels)), labels]).mean(), rel=1e-9)
    assert min(losses, key=losses.get) == f"{chosen['weight']:.1f},{chosen['svm_weight']:.1f}"


def test_the_geometric_pool_is_the_weighted_geometric_mean_of_the_members(tmp_path):
    """``model.blend_pool=geometric``: the validation log loss of (w, v) and the blend's output are those of
    p_network^w p_machines^v p_trees^(1 - w - v), normalised over the classes (each member's probabilities clipped at
    1e-12 first, as the network's e^-30 is)."""
    cfg = tiny_config(tmp_path, "model.blend=hgb+svm", "model.blend_pool=geometric")
    result = train(load_config(None, [f"out_dir={tmp_path}", "model.arch=hgb", "data.synthetic.modalities=3",
                                      "data.synthetic.features=8", "data.synthetic.samples=240",
                                      "data.synthetic.classes=4", "data.missing=mcar:0.3"]))  # fmt: skip
    splits = result.splits
    blend, chosen = fit_blend(Oracle(cfg.model, splits.schema, 1), cfg.model, cfg.seed, splits.train, splits.val,
                              64, "cpu")  # fmt: skip
    labels = splits.val.labels_N.numpy()
    wrong = (labels + 1) % 4
    p_net = np.full((len(labels), 4), 1 / (np.exp(30) + 3))
    p_net[np.arange(len(labels)), wrong] = np.exp(30) / (np.exp(30) + 3)
    with torch.no_grad():
        p_machines = torch.cat([blend.product(b) for b in splits.val.batches(64)]).numpy()
    p_trees = result.model.predict(splits.val).probs_NC

    def by_hand(w, v):
        log_p = sum(a * np.log(np.clip(p, 1e-12, None)) for a, p in [(w, p_net), (v, p_machines), (1 - w - v, p_trees)])
        p = np.exp(log_p - log_p.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    for w, v in [(0.5, 0.3), (0.2, 0.0), (0.0, 0.6)]:
        expected = -np.log(by_hand(w, v)[np.arange(len(labels)), labels]).mean()
        assert chosen["val_log_loss"][f"{w:.1f},{v:.1f}"] == pytest.approx(expected, rel=1e-6)
    assert chosen["weight"] == 0.0  # the always-wrong network: any w > 0 lowers the true class's probability
    blend.weight.fill_(0.5), blend.product_weight.fill_(0.3)
    with torch.no_grad():
        probs = torch.cat([blend(b).logits_BC.double().softmax(dim=1) for b in splits.val.batches(64)]).numpy()
    np.testing.assert_allclose(probs, by_hand(0.5, 0.3), rtol=1e-5, atol=1e-7)


def test_a_pool_needs_a_blend():
    with pytest.raises(ConfigError, match="model.blend_pool=geometric pools a blend's members"):
        load_config("configs/multimoe.yaml", ["model.blend_pool=geometric"])


@pytest.fixture(scope="module", params=["linear", "geometric"])
def blended_svm(request, tmp_path_factory) -> tuple[str, Path]:
    folder = tmp_path_factory.mktemp("blend_svm")
    pool = f"model.blend_pool={request.param}"
    return train_run(folder, "multimoe", "model.blend=hgb+svm", pool, "data.missing=mcar:0.4", "train.epochs=1"), folder


def test_a_run_blended_with_the_machines_predicts_reloads_and_exports(blended_svm):
    from test_export import check_every_combination

    run, folder = blended_svm
    summary = json.loads((Path(run) / "summary.json").read_text())
    (note,) = [n for n in summary["notes"] if n.startswith("blend: ")]
    predictor = load_predictor(run)
    w, v = float(predictor.model.weight), float(predictor.model.product_weight)
    assert note.startswith(f"blend: {w:.1f} x the network + {max(1 - w - v, 0):.1f} x gradient boosting + {v:.1f} x")
    df = patients(60, seed=5)
    probs = predictor.predict_proba(df)
    parts = []
    for weights in [(1.0, 0.0), (0.0, 1.0), (0.0, 0.0)]:  # the network, the machines, the trees
        predictor.model.weight.fill_(weights[0]), predictor.model.product_weight.fill_(weights[1])
        parts.append(predictor.predict_proba(df))
    if predictor.model.geometric:
        pooled = parts[0] ** w * parts[1] ** v * parts[2] ** (1 - w - v)
        np.testing.assert_allclose(probs, pooled / pooled.sum(axis=1, keepdims=True), atol=1e-6)
    else:
        np.testing.assert_allclose(probs, w * parts[0] + v * parts[1] + (1 - w - v) * parts[2], atol=1e-6)
    opened = open_run(run)  # the reloaded run evaluates as the run did
    assert evaluate(opened.model, opened.splits.test)["overall"] == summary["test"]["overall"]
    assert note == f"blend: {opened.model.describe()}, the weights of lowest validation log loss"
    report = routing_report_frames(run)["summary"].set_index("item")["value"]
    assert report["blend"].startswith(opened.model.describe() + "; the test metrics are the blend's")
    network = sum(p.numel() for p in predictor.model.network.parameters())  # the sizes count every member
    members = predictor.model.costs({"parameters": 0, "active_parameters": 0, "flops_per_sample": 0})["parameters"]
    assert summary["parameters"] == network + members and members > predictor.model.trees.is_leaf.numel() > 0
    code, _, err = cli("export", run, "--format", "onnx", "--out", str(folder / "model.onnx"))
    assert code == 0, err
    assert check_every_combination(run, folder / "model.onnx") >= 5
