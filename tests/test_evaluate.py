"""Evaluation (multimoe/evaluate.py): every metric against values worked out by hand, per combination and per size,
and the per-combination protocol on a model whose prediction depends on which modalities it sees."""

import numpy as np
import pytest
import torch
from torch import nn

from multimoe.data.dataset import DataSchema, MultimodalData
from multimoe.evaluate import (
    Predictions,
    auc_score,
    brier_score,
    classification_metrics,
    evaluate,
    evaluate_combinations,
    expected_calibration_error,
    format_results,
    metrics_from_predictions,
    routing_stats,
)
from multimoe.model import ModelOutput

# six samples of three classes; argmax predictions 0, 1, 1, 1, 2, 0
LABELS = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.3, 0.6, 0.1],
        [0.2, 0.7, 0.1],
        [0.1, 0.8, 0.1],
        [0.1, 0.1, 0.8],
        [0.5, 0.2, 0.3],
    ]
)


def test_accuracy_and_macro_f1_by_hand():
    m = classification_metrics(LABELS, PROBS)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per class F1: class 0 P=1/2 R=1/2 -> 1/2; class 1 P=2/3 R=1 -> 4/5; class 2 P=1 R=1/2 -> 2/3
    assert m["f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)  # macro, not micro (= accuracy here)


def test_multiclass_auc_is_the_macro_one_vs_rest_mean():
    # class 0: positives 0.7, 0.3 against negatives 0.2, 0.1, 0.1, 0.5 -> 7 of 8 pairs; classes 1 and 2 separate fully
    assert auc_score(LABELS, PROBS) == pytest.approx((7 / 8 + 1 + 1) / 3)


def test_multiclass_auc_skips_a_class_absent_from_the_labels():
    # rows 0-3 have no class 2: class 0 (0.7, 0.3 vs 0.2, 0.1) and class 1 (0.7, 0.8 vs 0.2, 0.6) separate fully
    assert auc_score(LABELS[:4], PROBS[:4]) == pytest.approx(1.0)
    # rows 0, 1 and 5: class 0 (0.7, 0.3 vs 0.5) -> 1 of 2 pairs; class 2 (0.3 vs 0.1, 0.1) -> 1; class 1 absent
    assert auc_score(LABELS[[0, 1, 5]], PROBS[[0, 1, 5]]) == pytest.approx((1 / 2 + 1) / 2)
    assert auc_score(np.array([1, 1]), PROBS[2:4]) is None  # one class: undefined


def test_binary_auc_is_the_positive_class_auc():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.1, 0.9]])
    # positives score 0.4 and 0.9 against negatives 0.1 and 0.6: 3 of 4 pairs (the negative class's AUC is 1/4)
    assert auc_score(labels, probs) == pytest.approx(0.75)
    assert classification_metrics(labels, probs)["auc"] == pytest.approx(0.75)


def test_empty_subset_has_no_metrics():
    assert classification_metrics(np.array([], dtype=int), np.zeros((0, 3))) == {
        "n": 0,
        "accuracy": None,
        "f1": None,
        "auc": None,
        "brier": None,
        "ece": None,
    }


def test_multiclass_brier_by_hand():
    # Σ_c (p_c - [y = c])^2 per row: 0.14, 0.86, 0.14, 0.06, 0.06, 0.78 -> mean 2.04 / 6
    assert brier_score(LABELS, PROBS) == pytest.approx(0.34)
    assert classification_metrics(LABELS, PROBS)["brier"] == pytest.approx(0.34)


def test_binary_brier_and_ece_by_hand():
    labels = np.array([1, 0, 1, 0])
    probs = np.array([[0.05, 0.95], [0.05, 0.95], [0.45, 0.55], [0.9, 0.1]])
    # (0.95 - 1)^2 + 0.95^2 + (0.55 - 1)^2 + 0.1^2 = 0.0025 + 0.9025 + 0.2025 + 0.01 = 1.1175
    assert brier_score(labels, probs) == pytest.approx(1.1175 / 4)
    # confidences 0.95 (right), 0.95 (wrong), 0.55 (right), 0.9 (right) in bins 14, 14, 8, 13 of 15:
    # (2 * |0.5 - 0.95| + |1 - 0.55| + |1 - 0.9|) / 4 = 1.45 / 4
    metrics = classification_metrics(labels, probs)
    assert metrics["ece"] == pytest.approx(0.3625)
    assert expected_calibration_error(labels, probs) == pytest.approx(0.3625)
    # one bin: |accuracy - mean confidence| = |0.75 - 0.8375|
    assert expected_calibration_error(labels, probs, bins=1) == pytest.approx(0.0875)
    # a confidence on a bin's upper edge belongs to that bin: 0.6 and 0.8 of 5 bins are bins 2 and 3
    edge = np.array([[0.4, 0.6], [0.2, 0.8]])
    assert expected_calibration_error(np.array([1, 0]), edge, bins=5) == pytest.approx((0.4 + 0.8) / 2)


def test_per_combination_and_per_size_by_hand():
    # two modalities: combination 0 = a+b, 1 = a, 2 = b; two samples each
    pred = Predictions(PROBS, LABELS, np.array([0, 0, 1, 1, 2, 2]), loss=0.5, routing=[])
    result = metrics_from_predictions(pred, ("a", "b"))
    rows = {r["combination"]: r for r in result["per_combination"]}
    assert [(r["combination"], r["index"]) for r in result["per_combination"]] == [("a+b", 0), ("a", 1), ("b", 2)]
    assert (rows["a+b"]["accuracy"], rows["a"]["accuracy"], rows["b"]["accuracy"]) == (0.5, 1.0, 0.5)
    assert (rows["a+b"]["size"], rows["a"]["size"], rows["b"]["n"]) == (2, 1, 2)
    sizes = {r["size"]: r for r in result["per_size"]}
    assert [r["size"] for r in result["per_size"]] == [2, 1]  # largest first
    assert sizes[2]["accuracy"] == 0.5 and sizes[2]["n"] == 2
    assert sizes[1]["accuracy"] == 0.75 and sizes[1]["n"] == 4  # a: 2 right, b: 1 right
    assert result["overall"]["accuracy"] == pytest.approx(4 / 6) and result["loss"] == 0.5


class PresenceModel(nn.Module):
    """Predicts class m for the highest-numbered modality m it sees (logits = 2 * m where present, else -1)."""

    def __init__(self, schema: DataSchema) -> None:
        super().__init__()
        self.schema = schema

    def forward(self, batch):
        M = batch.present_BM.shape[1]
        logits = torch.where(batch.present_BM, 2.0 * torch.arange(M, dtype=torch.float32), torch.tensor(-1.0))
        return ModelOutput(logits, logits.new_zeros(()), [], None)


def presence_data(present_NM: np.ndarray, labels: list[int]) -> MultimodalData:
    schema = DataSchema(("a", "b"), (1, 1), ("0", "1"))
    N = len(labels)
    return MultimodalData(
        schema,
        {m: torch.zeros(N, 1) for m in schema.modalities},
        {m: torch.zeros(N, 1, dtype=torch.bool) for m in schema.modalities},
        torch.as_tensor(present_NM),
        torch.tensor(labels),
        np.arange(N),
    )


def test_evaluate_scores_the_presence_each_sample_has():
    data = presence_data(np.array([[True, True], [True, False], [False, True], [True, False]]), [1, 0, 1, 1])
    result = evaluate(PresenceModel(data.schema), data)
    assert result["overall"]["accuracy"] == 0.75  # predictions 1, 0, 1, 0
    by = {r["combination"]: r["accuracy"] for r in result["per_combination"]}
    assert by == {"a+b": 1.0, "a": 0.5, "b": 1.0}


def test_evaluate_without_breakdown_gives_the_overall_numbers_in_any_batch_size():
    # training's model selection reads overall metrics only: same numbers, no groups; batches of 1 and 3 rows
    data = presence_data(np.array([[True, True], [True, False], [False, True], [True, False]]), [1, 0, 1, 1])
    full = evaluate(PresenceModel(data.schema), data)
    for batch_size in (1, 3):
        lean = evaluate(PresenceModel(data.schema), data, batch_size, breakdown=False)
        assert set(lean) == {"overall", "loss", "routing"}
        assert lean["overall"] == full["overall"] and lean["overall"]["accuracy"] == 0.75
        assert lean["loss"] == pytest.approx(full["loss"])


def test_evaluate_combinations_shows_every_sample_each_combination_its_data_allow():
    # every sample is labelled 1; the model predicts 1 exactly when it sees b
    data = presence_data(np.ones((4, 2), dtype=bool), [1, 1, 1, 1])
    natural_NM = np.array([[True, True], [True, True], [True, False], [True, True]])  # row 2 never has b
    rows = {r["combination"]: r for r in evaluate_combinations(PresenceModel(data.schema), data, natural_NM)}
    assert rows["a+b"]["accuracy"] == 1.0 and rows["a+b"]["n"] == 3  # row 2 cannot show b
    assert rows["a"]["accuracy"] == 0.0 and rows["a"]["n"] == 4
    assert rows["b"]["accuracy"] == 1.0 and rows["b"]["n"] == 3
    assert [rows[c]["index"] for c in ("a+b", "a", "b")] == [0, 1, 2]


def test_a_combination_no_row_can_show_is_reported_empty():
    data = presence_data(np.ones((3, 2), dtype=bool), [1, 0, 1])
    natural_NM = np.array([[True, False], [True, False], [True, False]])  # b is never observed
    rows = evaluate_combinations(PresenceModel(data.schema), data, natural_NM)
    assert [(r["combination"], r["index"], r["size"], r["n"]) for r in rows] == [("a+b", 0, 2, 0), ("a", 1, 1, 3),
                                                                                 ("b", 2, 1, 0)]  # fmt: skip
    assert rows[0]["accuracy"] is None and rows[2]["auc"] is None
    assert rows[1]["accuracy"] == pytest.approx(1 / 3)  # a alone -> class 0; labels 1, 0, 1


def test_format_results_prints_overall_and_per_size():
    result = {
        "overall": {"n": 6, "accuracy": 4 / 6, "f1": 0.5, "auc": None},
        "per_size": [{"size": 2, "n": 2, "accuracy": 0.5, "f1": 0.25, "auc": 0.75}],
    }
    assert format_results(result, "test (mcar:0.3)").splitlines() == [
        "test (mcar:0.3): accuracy 0.6667  macro-F1 0.5000  AUC   -    (n=6)",
        " observed modalities      n  accuracy      F1     AUC",
        "                   2      2    0.5000  0.2500  0.7500",
    ]
    result["overall"] |= {"auc": 0.8125}
    assert "AUC 0.8125  (n=6)" in format_results(result).splitlines()[0]
    result["overall"] |= {"brier": 0.34, "ece": 0.3625}
    assert format_results(result).splitlines()[0] == (
        "test: accuracy 0.6667  macro-F1 0.5000  AUC 0.8125  Brier 0.3400  ECE 0.3625  (n=6)"
    )


def test_routing_stats_sum_gate_weights_by_combination_and_modality():
    from multimoe.moe import MoEOutput, TokenInfo
    from multimoe.routers import Routing

    # three tokens: (modality 0, combination 1), (modality 1, combination 0), (modality 0, combination 0)
    routing = Routing(torch.tensor([[0.75, 0.25], [1.0, 0.0], [0.5, 0.5]]), torch.tensor([[2, 0], [1, 2], [0, 1]]),
                      torch.zeros(3, 3), torch.zeros(3, 3))  # fmt: skip
    out = MoEOutput(torch.zeros(3, 4), routing, torch.tensor([2, 2, 2]), torch.zeros(()))
    stats = routing_stats(out, TokenInfo(torch.tensor([0, 1, 0]), torch.tensor([1, 0, 0]), 2))
    assert stats["tokens_per_expert"].tolist() == [2.0, 2.0, 2.0]
    assert stats["combination_weight"].tolist() == [[0.5, 1.5, 0.0], [0.25, 0.0, 0.75], [0.0, 0.0, 0.0]]
    assert stats["modality_weight"].tolist() == [[0.75, 0.5, 0.75], [0.0, 1.0, 0.0]]


def test_evaluate_passes_its_batch_size_device_and_callback_to_every_batch(monkeypatch):
    import multimoe.evaluate as ev

    data = presence_data(np.array([[True, True], [True, False], [False, True], [True, False], [True, True]]),
                         [1, 0, 1, 1, 0])  # fmt: skip
    seen, calls = [], []
    predict = ev.predict
    monkeypatch.setattr(ev, "predict", lambda *a, **k: calls.append((a[2:], k)) or predict(*a, **k))
    result = evaluate(PresenceModel(data.schema), data, 2, "cpu", lambda out, batch: seen.append(len(batch.labels_B)))
    assert seen == [2, 2, 1]  # batches of 2 rows, each shown to the callback
    assert calls[0] == ((2, "cpu", calls[0][0][2]), {}) and callable(calls[0][0][2])  # batch size, device, callback
    assert result["routing"] == []  # no MoE layer: nothing routed, and the key is there
    evaluate_combinations(PresenceModel(data.schema), data, np.ones((5, 2), dtype=bool), batch_size=3)
    assert all(args[0] == 3 for args, _ in calls[1:]) and len(calls) == 4  # one predict per combination, 3 rows each


def test_ece_keeps_the_two_lowest_bins_apart():
    # 20 classes, so a confidence can fall in 15 bins' bin 0 (<= 1/15): sample 0 is right at confidence 0.06 (bin 0),
    # sample 1 wrong at 0.1 (bin 1): (|1 - 0.06| + |0 - 0.1|) / 2; merging the two bins would give |0.5 - 0.08|
    probs = np.stack([np.r_[0.06, np.full(19, 0.94 / 19)], np.r_[0.1, np.full(19, 0.9 / 19)]])
    assert expected_calibration_error(np.array([0, 1]), probs) == pytest.approx((0.94 + 0.1) / 2)
