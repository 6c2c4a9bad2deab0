"""The simple systems a practitioner would try first, on the same splits, masks and preprocessing as every method.

- ``logreg``: mean imputation, standardisation, L2 logistic regression. multimoe's preprocessing already
  standardises numeric columns with training statistics and puts 0 (the training mean) in missing cells and in
  absent modalities, so the design matrix is exactly the mean-imputed standardised table.
- ``hgb``: histogram gradient boosting with NaN in missing cells and absent modalities (it handles NaN natively).

Both are registered in ``multimoe.registry.ARCHS`` with kind ``baseline``.

Modalities of other kinds (``multimoe.data.kinds``): an embedding's features are columns like a table's (standardised
with training statistics); raw signals, images and text are refused unless the config says what to read instead:
``model.baseline_series=summary`` gives per-channel statistics of each series (``SUMMARY``, on the channels'
standardised values), ``flatten`` every channel's value at every step, and ``model.baseline_image=flatten`` every
pixel; an unobserved step or pixel is a missing cell.

A fitted baseline is saved without pickle, as arrays in the run's safetensors checkpoint (``state_dict``): logistic
regression's coefficients and intercepts; gradient boosting's trees as flat node arrays (feature, threshold, side
of missing values, children, leaf values) with the baseline score. ``load_state_dict`` rebuilds a predictor from
them (``LinearModel``, ``TreeEnsemble``) that computes scikit-learn's ``predict_proba`` with the same arithmetic in
the same order (tests: equal to 1e-12).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from multimoe.config import ConfigError, ModelConfig
from multimoe.data.dataset import MultimodalData
from multimoe.errors import CheckpointError
from multimoe.evaluate import Predictions

# per channel of a series, over its observed steps (NaN when it has none): mean, standard deviation, extremes,
# quantiles, energy (mean square), mean absolute change between consecutive observations, share of steps observed
SUMMARY = ("mean", "std", "min", "max", "q10", "q25", "q50", "q75", "q90", "energy", "abs_change", "observed")
CHUNK_ROWS = 2048  # rows of a source read at a time for the design matrix


def design_matrix(data: MultimodalData, nan_missing: bool, cfg: ModelConfig | None = None) -> np.ndarray:
    """N x ΣF features; absent modalities and missing cells are 0 (the training mean) or NaN. Sources: embeddings
    as columns; series and images as ``cfg.baseline_series`` / ``cfg.baseline_image`` say (else a ConfigError)."""
    blocks = []
    for m, name in enumerate(data.schema.modalities):
        if name in data.sources:
            x, missing = source_features(data, name, cfg)
        else:
            x = data.values[name].numpy().astype(np.float64, copy=True)
            missing = data.cell_missing[name].numpy()
        x[missing | ~data.present_NM[:, m : m + 1].numpy()] = np.nan if nan_missing else 0.0
        blocks.append(x)
    return np.concatenate(blocks, axis=1)


def source_features(data: MultimodalData, name: str, cfg: ModelConfig | None) -> tuple[np.ndarray, np.ndarray]:
    """A source modality's features for every row of ``data`` (float64) and where they are missing, read in chunks
    of ``CHUNK_ROWS`` rows; a ConfigError for a kind the config gives the baselines no features of."""
    kind = data.sources[name].kind
    how = {"embedding": "columns", "series": cfg and cfg.baseline_series, "image": cfg and cfg.baseline_image}
    how = how.get(kind) or "none"
    if how == "none":
        key = {"series": "model.baseline_series=summary (per-channel statistics) or flatten", "image":
               "model.baseline_image=flatten (every pixel)"}.get(kind)  # fmt: skip
        raise ConfigError(
            f"logreg and hgb do not take raw signals, images or text: modality '{name}' is {kind}; "
            + (f"set {key} to give them features of it, or " if key else "")
            + "use a neural preset (its encoders read them)"
        )
    xs, ms = [], []
    source, rows, present = data.sources[name], data.rows_N, data.present_NM[:, data.schema.modalities.index(name)]
    for start in range(0, len(rows), CHUNK_ROWS):
        x, missing = source.batch(rows[start : start + CHUNK_ROWS], present[start : start + CHUNK_ROWS].numpy())
        if how == "summary":
            values = np.where(missing.numpy(), np.nan, x.values_BVU.numpy()).astype(np.float64)
            xs.append(series_summary(values))
            ms.append(np.isnan(xs[-1]))
            continue
        if kind == "image":  # an unobserved pixel is missing in every channel
            missing = missing[:, None].expand_as(x)
        elif kind == "series":
            x = x.values_BVU
        xs.append(x.numpy().reshape(len(x), -1).astype(np.float64))
        ms.append(missing.numpy().reshape(len(x), -1))
    return np.concatenate(xs), np.concatenate(ms)


def series_summary(values_BVU: np.ndarray) -> np.ndarray:
    """B x (V * len(SUMMARY)) statistics of each channel over its observed (non-NaN) steps, channel by channel in
    ``SUMMARY``'s order; NaN for a channel with no observation (its ``observed`` share is 0)."""
    B, V, U = values_BVU.shape
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN channels: NaN statistics, as intended
        quantiles = np.nanquantile(values_BVU, [0.1, 0.25, 0.5, 0.75, 0.9], axis=2)  # 5 x B x V
        observed = ~np.isnan(values_BVU)
        # consecutive observations of each channel, gaps skipped: each observed step against the last one before it
        last = np.maximum.accumulate(np.where(observed, np.arange(U), -1), axis=2)
        before = np.concatenate([np.full((B, V, 1), -1), last[:, :, :-1]], axis=2)
        pair = observed & (before >= 0)
        change = np.abs(values_BVU - np.take_along_axis(values_BVU, np.maximum(before, 0), axis=2))
        changes = np.where(pair, change, 0.0).sum(axis=2) / np.where(pair.any(axis=2), pair.sum(axis=2), np.nan)
        stats = [
            np.nanmean(values_BVU, axis=2),
            np.nanstd(values_BVU, axis=2),
            np.nanmin(values_BVU, axis=2),
            np.nanmax(values_BVU, axis=2),
            *quantiles,
            np.nanmean(values_BVU**2, axis=2),
            changes,
            observed.mean(axis=2),
        ]
    return np.stack(stats, axis=2).reshape(B, V * len(SUMMARY))


class SklearnBaseline:
    """A scikit-learn classifier behind multimoe's prediction interface (``fit``, ``predict``, sizes)."""

    nan_missing = False  # NaN (not 0) in missing cells and absent modalities

    def __init__(self, cfg: ModelConfig, seed: int) -> None:
        self.cfg = cfg
        self.estimator = self.make_estimator(cfg, seed)
        self.num_classes = 0
        self.schema = None  # the data's DataSchema, set by fit (or by whoever loads saved arrays)

    def make_estimator(self, cfg: ModelConfig, seed: int):
        raise NotImplementedError

    def fit(self, train: MultimodalData) -> SklearnBaseline:
        self.num_classes = train.schema.num_classes
        self.schema = train.schema
        self.estimator.fit(design_matrix(train, self.nan_missing, self.cfg), train.labels_N.numpy())
        return self

    def predict(self, data: MultimodalData) -> Predictions:
        probs = np.zeros((len(data), self.num_classes))
        X = design_matrix(data, self.nan_missing, self.cfg)
        probs[:, self.estimator.classes_] = self.estimator.predict_proba(X)
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

    def flops(self) -> int:
        """One comparison per tree and level: the sum of the trees' depths (the most levels a sample walks)."""
        return int(sum(p.nodes["depth"].max() for it in self.estimator._predictors for p in it))

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
