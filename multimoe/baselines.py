"""The simple systems a practitioner would try first, on the same splits, masks and preprocessing as every method.

- ``logreg``: mean imputation, standardisation, L2 logistic regression. multimoe's preprocessing already
  standardises numeric columns with training statistics and puts 0 (the training mean) in missing cells and in
  absent modalities, so the design matrix is exactly the mean-imputed standardised table.
- ``hgb``: histogram gradient boosting with NaN in missing cells and absent modalities (it handles NaN natively).
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


class SklearnModel:
    """A fitted scikit-learn classifier behind multimoe's prediction interface."""

    def __init__(self, arch: str, estimator, num_classes: int) -> None:
        self.arch, self.estimator, self.num_classes = arch, estimator, num_classes

    def predict(self, data: MultimodalData) -> Predictions:
        X = design_matrix(data, nan_missing=self.arch == "hgb")
        probs = np.zeros((len(data), self.num_classes))
        probs[:, self.estimator.classes_] = self.estimator.predict_proba(X)
        labels = data.labels_N.numpy()
        loss = float(log_loss(labels, probs, labels=range(self.num_classes))) if len(data) else float("nan")
        return Predictions(probs, labels, data.combo_N.numpy(), loss, [])

    def parameters(self) -> int:
        """Coefficients (logreg) or tree nodes (hgb): a size measure, not comparable to neural parameters."""
        if self.arch == "logreg":
            return int(self.estimator.coef_.size + self.estimator.intercept_.size)
        return int(sum(p.nodes.shape[0] for it in self.estimator._predictors for p in it))

    def flops_per_sample(self) -> int | None:
        return 2 * int(self.estimator.coef_.size) if self.arch == "logreg" else None


def fit_sklearn(cfg: ModelConfig, train: MultimodalData, seed: int) -> SklearnModel:
    if cfg.arch == "logreg":
        estimator = LogisticRegression(C=cfg.logreg_c, max_iter=5000)
    elif cfg.arch == "hgb":
        estimator = HistGradientBoostingClassifier(max_iter=cfg.hgb_max_iter, random_state=seed)
    else:
        raise ValueError(f"model.arch={cfg.arch!r} is not a scikit-learn baseline; choose logreg or hgb")
    X = design_matrix(train, nan_missing=cfg.arch == "hgb")
    estimator.fit(X, train.labels_N.numpy())
    return SklearnModel(cfg.arch, estimator, train.schema.num_classes)
