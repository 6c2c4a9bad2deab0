"""The simple systems a practitioner would try first, on the same splits, masks and preprocessing as every method.

- ``logreg``: mean imputation, standardisation, L2 logistic regression. multimoe's preprocessing already
  standardises numeric columns with training statistics and puts 0 (the training mean) in missing cells and in
  absent modalities, so the design matrix is exactly the mean-imputed standardised table.
- ``hgb``: histogram gradient boosting with NaN in missing cells and absent modalities (it handles NaN natively).

Both are registered in ``multimoe.registry.ARCHS`` with kind ``baseline``.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from multimoe.config import ModelConfig
from multimoe.data.dataset import MultimodalData
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

    def make_estimator(self, cfg: ModelConfig, seed: int):
        raise NotImplementedError

    def fit(self, train: MultimodalData) -> SklearnBaseline:
        self.num_classes = train.schema.num_classes
        self.estimator.fit(design_matrix(train, self.nan_missing), train.labels_N.numpy())
        return self

    def predict(self, data: MultimodalData) -> Predictions:
        probs = np.zeros((len(data), self.num_classes))
        probs[:, self.estimator.classes_] = self.estimator.predict_proba(design_matrix(data, self.nan_missing))
        labels = data.labels_N.numpy()
        loss = float(log_loss(labels, probs, labels=range(self.num_classes))) if len(data) else float("nan")
        return Predictions(probs, labels, data.combo_N.numpy(), loss, [])

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


class HGB(SklearnBaseline):
    nan_missing = True

    def make_estimator(self, cfg: ModelConfig, seed: int):
        return HistGradientBoostingClassifier(max_iter=cfg.hgb_max_iter, random_state=seed)

    def size(self) -> int:
        return int(sum(p.nodes.shape[0] for it in self.estimator._predictors for p in it))
