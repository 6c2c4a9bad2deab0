"""Evaluation: accuracy, macro F1 and AUC overall, per modality combination and per combination size.

AUC: binary tasks report the positive class's AUC; multiclass tasks the macro one-vs-rest AUC over the classes that
occur in the evaluated labels (undefined -> None, e.g. a subset with one class).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score, roc_auc_score

from multimoe.batch import combination_name, combinations, num_combinations
from multimoe.data.dataset import MultimodalData
from multimoe.data.protocols import combination_presence

# Rows per evaluation batch unless the caller says (train.eval_batch_size has the same default). The experts'
# intermediates grow with it: Flex-MoE's published model on mfeat allocates ~390 MB in its expert layer for a
# 300-row batch, ~85 MB for 64 rows. A row's probabilities do not depend on its batch (up to float summation order).
EVAL_BATCH_SIZE = 64


@dataclass
class Predictions:
    probs_NC: np.ndarray
    labels_N: np.ndarray
    combo_N: np.ndarray
    loss: float  # mean cross-entropy
    routing: list[dict]  # per MoE layer: routing statistics (see ``routing_stats``)


def routing_stats(moe_out, info) -> dict[str, torch.Tensor]:
    """Gate-weight sums by (combination, expert) and (modality, expert), and top-k slot counts per expert."""
    w_TE = moe_out.routing.dense_weights().detach().float()
    M, S = info.num_modalities, num_combinations(info.num_modalities)
    return {
        "tokens_per_expert": moe_out.tokens_per_expert_E.detach().cpu().double(),
        "combination_weight": w_TE.new_zeros(S, w_TE.shape[1]).index_add(0, info.combo_T, w_TE).cpu(),
        "modality_weight": w_TE.new_zeros(M, w_TE.shape[1]).index_add(0, info.modality_T, w_TE).cpu(),
    }


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    data: MultimodalData,
    batch_size: int = EVAL_BATCH_SIZE,
    device: str = "cpu",
    on_output: Callable | None = None,
) -> Predictions:
    """Class probabilities, loss and routing totals of ``model`` on ``data`` (eval mode, in data order).
    ``on_output(out, batch)`` sees every batch's ``ModelOutput``, e.g. to tally finer routing statistics."""
    if not isinstance(model, torch.nn.Module):  # a fitted scikit-learn baseline (multimoe.baselines)
        return model.predict(data)
    was_training = model.training
    model.eval()
    probs, loss_sum, totals = [], 0.0, None
    for batch in data.batches(batch_size):
        batch = batch.to(device)
        out = model(batch)
        if on_output is not None:
            on_output(out, batch)
        loss_sum += float(F.cross_entropy(out.logits_BC.float(), batch.labels_B, reduction="sum"))
        probs.append(out.logits_BC.float().softmax(dim=1).cpu())
        stats = [routing_stats(m, m.info or out.info) for m in out.moe]  # a layer may route its own tokens
        totals = stats if totals is None else [{k: a[k] + b[k] for k in a} for a, b in zip(totals, stats)]
    model.train(was_training)
    return Predictions(
        probs_NC=torch.cat(probs).numpy(),
        labels_N=data.labels_N.numpy(),
        combo_N=data.combo_N.numpy(),
        loss=loss_sum / max(len(data), 1),
        routing=[{k: np.round(v.numpy(), 4).tolist() for k, v in layer.items()} for layer in totals or []],
    )


def auc_score(labels_N: np.ndarray, probs_NC: np.ndarray) -> float | None:
    num_classes = probs_NC.shape[1]
    if num_classes == 2:
        if len(np.unique(labels_N)) < 2:
            return None
        return float(roc_auc_score(labels_N, probs_NC[:, 1]))
    scores = []
    for c in range(num_classes):
        pos = labels_N == c
        if 0 < pos.sum() < len(labels_N):
            scores.append(roc_auc_score(pos, probs_NC[:, c]))
    return float(np.mean(scores)) if scores else None


ECE_BINS = 15


def brier_score(labels_N: np.ndarray, probs_NC: np.ndarray) -> float:
    """Binary: mean (p_positive - y)^2 (scikit-learn's brier_score_loss); multiclass: Brier's mean over samples of
    Σ_c (p_c - [y = c])^2 (0 perfect, 2 worst)."""
    if probs_NC.shape[1] == 2:
        return float(np.mean((probs_NC[:, 1] - labels_N) ** 2))
    onehot_NC = np.eye(probs_NC.shape[1])[labels_N]
    return float(np.mean(np.sum((probs_NC - onehot_NC) ** 2, axis=1)))


def expected_calibration_error(labels_N: np.ndarray, probs_NC: np.ndarray, bins: int = ECE_BINS) -> float:
    """Σ_b (n_b / N) |accuracy_b - confidence_b| over equal-width bins (lower, upper] of the predicted class's
    probability (Guo et al. 2017)."""
    conf_N = probs_NC.max(axis=1)
    right_N = (probs_NC.argmax(axis=1) == labels_N).astype(float)
    bin_N = np.clip(np.ceil(conf_N * bins).astype(int) - 1, 0, bins - 1)  # (b/bins, (b+1)/bins] -> b
    total = 0.0
    for b in np.unique(bin_N):
        sel = bin_N == b
        total += sel.sum() * abs(right_N[sel].mean() - conf_N[sel].mean())
    return float(total / len(labels_N))


def classification_metrics(labels_N: np.ndarray, probs_NC: np.ndarray) -> dict:
    """Accuracy, macro-F1, AUC (module docstring) and calibration: Brier score and the expected calibration error
    over ``ECE_BINS`` bins."""
    if len(labels_N) == 0:
        return {"n": 0, "accuracy": None, "f1": None, "auc": None, "brier": None, "ece": None}
    pred_N = probs_NC.argmax(axis=1)
    return {
        "n": int(len(labels_N)),
        "accuracy": float((pred_N == labels_N).mean()),
        "f1": float(f1_score(labels_N, pred_N, average="macro", zero_division=0)),
        "auc": auc_score(labels_N, probs_NC),
        "brier": brier_score(labels_N, probs_NC),
        "ece": expected_calibration_error(labels_N, probs_NC),
    }


def metrics_from_predictions(pred: Predictions, modalities: tuple[str, ...], breakdown: bool = True) -> dict:
    """Overall, per-combination and per-combination-size metrics (``breakdown=False``: overall, loss and routing
    only, as model selection during training reads them; the groups' metrics cost more than the forward pass of a
    small validation set)."""
    if not breakdown:
        return {"overall": classification_metrics(pred.labels_N, pred.probs_NC), "loss": pred.loss,
                "routing": pred.routing}  # fmt: skip
    M = len(modalities)
    combos = combinations(M)
    per_combination = []
    for idx in np.unique(pred.combo_N):
        sel = pred.combo_N == idx
        per_combination.append(
            {
                "combination": combination_name(combos[idx], list(modalities)),
                "index": int(idx),
                "size": len(combos[idx]),
                **classification_metrics(pred.labels_N[sel], pred.probs_NC[sel]),
            }
        )
    size_N = np.array([len(combos[i]) for i in pred.combo_N])
    per_size = [
        {"size": int(s), **classification_metrics(pred.labels_N[size_N == s], pred.probs_NC[size_N == s])}
        for s in sorted(np.unique(size_N), reverse=True)
    ]
    return {
        "overall": classification_metrics(pred.labels_N, pred.probs_NC),
        "loss": pred.loss,
        "per_combination": per_combination,
        "per_size": per_size,
        "routing": pred.routing,
    }


def evaluate(
    model: torch.nn.Module,
    data: MultimodalData,
    batch_size: int = EVAL_BATCH_SIZE,
    device: str = "cpu",
    on_output: Callable | None = None,
    breakdown: bool = True,
) -> dict:
    """Metrics of ``model`` on ``data``: overall, per combination, per combination size, mean loss (``on_output``:
    as in ``predict``; ``breakdown``: as in ``metrics_from_predictions``)."""
    pred = predict(model, data, batch_size, device, on_output)
    return metrics_from_predictions(pred, data.schema.modalities, breakdown)


def evaluate_combinations(
    model, data: MultimodalData, natural_NM: np.ndarray, batch_size: int = EVAL_BATCH_SIZE
) -> list[dict]:
    """The per-combination protocol: the test set once for every combination of observed modalities (Flex-MoE's
    table layout), each time showing every sample with exactly that combination. Rows whose own data lack one of
    the combination's modalities (natural missingness) are left out of that combination's cell."""
    natural = np.asarray(natural_NM)[data.rows_N]
    rows = []
    modalities = list(data.schema.modalities)
    for idx, combo in enumerate(combinations(len(modalities))):
        present, usable = combination_presence(natural, combo)
        keep = np.flatnonzero(usable)
        if keep.size == 0:
            rows.append({"combination": combination_name(combo, modalities), "index": idx, "size": len(combo),
                         **classification_metrics(np.array([]), np.zeros((0, 1)))})  # fmt: skip
            continue
        subset = data.subset(keep).with_presence(present[keep])
        pred = predict(model, subset, batch_size)
        rows.append(
            {
                "combination": combination_name(combo, modalities),
                "index": idx,
                "size": len(combo),
                **classification_metrics(pred.labels_N, pred.probs_NC),
            }
        )
    return rows


def _fmt(v) -> str:
    return "  -  " if v is None else f"{v:.4f}"


def format_results(result: dict, title: str = "test") -> str:
    """A readable table of overall and per-combination-size metrics."""
    o = result["overall"]
    lines = [
        f"{title}: accuracy {_fmt(o['accuracy'])}  macro-F1 {_fmt(o['f1'])}  AUC {_fmt(o['auc'])}  "
        # runs saved before calibration was measured have no Brier score
        + ("" if "brier" not in o else f"Brier {_fmt(o['brier'])}  ECE {_fmt(o['ece'])}  ")
        + f"(n={o['n']})",
        f"{'observed modalities':>20} {'n':>6} {'accuracy':>9} {'F1':>7} {'AUC':>7}",
    ]
    for row in result["per_size"]:
        lines.append(
            f"{row['size']:>20} {row['n']:>6} {_fmt(row['accuracy']):>9} {_fmt(row['f1']):>7} {_fmt(row['auc']):>7}"
        )
    return "\n".join(lines)
