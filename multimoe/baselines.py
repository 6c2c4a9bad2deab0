"""The simple systems a practitioner would try first, on the same splits, masks and preprocessing as every method.

- ``logreg``: mean imputation, standardisation, L2 logistic regression. multimoe's preprocessing already
  standardises numeric columns with training statistics and puts 0 (the training mean) in missing cells and in
  absent modalities, so the design matrix is exactly the mean-imputed standardised table.
- ``hgb``: histogram gradient boosting with NaN in missing cells and absent modalities (it handles NaN natively).

Both are registered in ``multimoe.registry.ARCHS`` with kind ``baseline``.

A fitted baseline is saved without pickle, as arrays in the run's safetensors checkpoint (``state_dict``): logistic
regression's coefficients and intercepts; gradient boosting's trees as flat node arrays (feature, threshold, side
of missing values, children, leaf values) with the baseline score. ``load_state_dict`` rebuilds a predictor from
them (``LinearModel``, ``TreeEnsemble``) that computes scikit-learn's ``predict_proba`` with the same arithmetic in
the same order (tests: equal to 1e-12).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from multimoe.config import ModelConfig
from multimoe.data.dataset import MultimodalData
from multimoe.errors import CheckpointError
from multimoe.evaluate import Predictions


def design_matrix(data: MultimodalData, nan_missing: bool) -> np.ndarray:
    """N x ΣF features; absent modalities and missing cells are 0 (the training mean) or NaN."""
    blocks = []
    for m, name in enumerate(data.schema.modalities):
        x = data.values[name].numpy().astype(np.float64, copy=True)
        absent = data.cell_missing[name].numpy() | ~data.present_NM[:, m : m + 1].numpy()
        x[absent] = np.nan if nan_missing else 0.0
        blocks.append(x)
    return np.concatenate(blocks, axis=1)


class SklearnBaseline:
    """A scikit-learn classifier behind multimoe's prediction interface (``fit``, ``predict``, sizes)."""

    nan_missing = False  # NaN (not 0) in missing cells and absent modalities

    def __init__(self, cfg: ModelConfig, seed: int) -> None:
        self.estimator = self.make_estimator(cfg, seed)
        self.num_classes = 0
        self.schema = None  # the data's DataSchema, set by fit (or by whoever loads saved arrays)

    def make_estimator(self, cfg: ModelConfig, seed: int):
        raise NotImplementedError

    def fit(self, train: MultimodalData) -> SklearnBaseline:
        self.num_classes = train.schema.num_classes
        self.schema = train.schema
        self.estimator.fit(design_matrix(train, self.nan_missing), train.labels_N.numpy())
        return self

    def predict(self, data: MultimodalData) -> Predictions:
        probs = np.zeros((len(data), self.num_classes))
        probs[:, self.estimator.classes_] = self.estimator.predict_proba(design_matrix(data, self.nan_missing))
        labels = data.labels_N.numpy()
        loss = float(log_loss(labels, probs, labels=range(self.num_classes))) if len(data) else float("nan")
        return Predictions(probs, labels, data.combo_N.numpy(), loss, [])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The fitted model's arrays as tensors (what ``save_checkpoint`` writes), for ``load_state_dict``."""
        arrays = {"classes": np.asarray(self.estimator.classes_, dtype=np.int64), **self.arrays()}
        arrays["num_classes"] = np.asarray([self.num_classes], dtype=np.int64)
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Predict from saved arrays (``state_dict``) instead of the fitted scikit-learn estimator."""
        arrays = {k: v.numpy() for k, v in state.items()}
        self.num_classes = int(arrays.pop("num_classes")[0])
        self.estimator = self.from_arrays(arrays)

    def arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def from_arrays(self, arrays: dict[str, np.ndarray]):
        raise NotImplementedError

    def costs(self) -> dict:
        """Size measures (coefficients or tree nodes: not comparable to neural parameters) and FLOPs if known."""
        return {"parameters": self.size(), "active_parameters": self.size(), "flops_per_sample": self.flops()}

    def size(self) -> int:
        raise NotImplementedError

    def flops(self) -> int | None:
        return None


class LogReg(SklearnBaseline):
    def make_estimator(self, cfg: ModelConfig, seed: int):
        return LogisticRegression(C=cfg.logreg_c, max_iter=5000)

    def size(self) -> int:
        return int(self.estimator.coef_.size + self.estimator.intercept_.size)

    def flops(self) -> int:
        return 2 * int(self.estimator.coef_.size)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.estimator.coef_, "intercept": self.estimator.intercept_}

    def from_arrays(self, arrays: dict[str, np.ndarray]) -> LinearModel:
        return LinearModel(arrays["coef"], arrays["intercept"], arrays["classes"])


class HGB(SklearnBaseline):
    nan_missing = True

    def make_estimator(self, cfg: ModelConfig, seed: int):
        return HistGradientBoostingClassifier(max_iter=cfg.hgb_max_iter, random_state=seed)

    def size(self) -> int:
        return int(sum(p.nodes.shape[0] for it in self.estimator._predictors for p in it))

    def arrays(self) -> dict[str, np.ndarray]:
        """Every tree's nodes, concatenated in the order scikit-learn adds them (iteration, then class)."""
        est = self.estimator
        trees = [p.nodes for iteration in est._predictors for p in iteration]
        if any(t["is_categorical"].any() for t in trees):  # the design matrix is numeric: never taken
            raise CheckpointError("gradient boosting with categorical splits cannot be saved as node arrays")
        nodes = np.concatenate(trees)
        return {
            "baseline": np.asarray(est._baseline_prediction, dtype=np.float64).reshape(-1),
            "tree_start": np.cumsum([0] + [len(t) for t in trees[:-1]]).astype(np.int64),
            "feature": nodes["feature_idx"].astype(np.int64),
            "threshold": nodes["num_threshold"].astype(np.float64),
            "missing_left": nodes["missing_go_to_left"].astype(np.bool_),
            "left": nodes["left"].astype(np.int64),
            "right": nodes["right"].astype(np.int64),
            "is_leaf": nodes["is_leaf"].astype(np.bool_),
            "value": nodes["value"].astype(np.float64),
        }

    def from_arrays(self, arrays: dict[str, np.ndarray]) -> TreeEnsemble:
        return TreeEnsemble(**arrays)


class LinearModel:
    """Logistic regression's ``predict_proba`` from its coefficients: the decision ``X @ coef.T + intercept``, then
    the logistic function (binary: one row of coefficients, for the second class) or the softmax over classes."""

    def __init__(self, coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray) -> None:
        self.coef, self.intercept, self.classes_ = coef, intercept, classes

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        decision = X @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:
            p1 = expit(decision[:, 0])
            return np.stack([1 - p1, p1], axis=1)
        return _softmax(decision)


class TreeEnsemble:
    """Gradient boosting's ``predict_proba`` from flat node arrays: every tree walked for all rows at once (NaN
    follows the node's side for missing values, else ``x <= threshold`` goes left), leaf values added to the
    baseline score tree by tree in scikit-learn's order, then the logistic function (binary) or the softmax."""

    def __init__(self, baseline, tree_start, feature, threshold, missing_left, left, right, is_leaf, value, classes):
        self.baseline, self.tree_start, self.classes_ = baseline, tree_start, classes
        self.feature, self.threshold, self.missing_left = feature, threshold, missing_left
        self.left, self.right, self.is_leaf, self.value = left, right, is_leaf, value

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        per_iteration = len(self.baseline)
        raw = np.zeros((X.shape[0], per_iteration), dtype=np.float64, order="F")
        raw += self.baseline
        rows = np.arange(X.shape[0])
        for i, start in enumerate(self.tree_start):
            node = np.full(X.shape[0], start)
            active = ~self.is_leaf[node]
            while active.any():
                at, r = node[active], rows[active]
                x = X[r, self.feature[at]]
                go_left = np.where(np.isnan(x), self.missing_left[at], x <= self.threshold[at])
                node[active] = start + np.where(go_left, self.left[at], self.right[at])
                active = ~self.is_leaf[node]
            raw[:, i % per_iteration] += self.value[node]
        if per_iteration == 1:
            p1 = expit(raw[:, 0])
            return np.stack([1 - p1, p1], axis=1)
        return _softmax(raw)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
