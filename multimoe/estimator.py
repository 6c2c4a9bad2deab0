"""A scikit-learn classifier around ``train``: ``MultiMoEClassifier(modalities={...}, preset="multimoe", **overrides)``.

``fit(X, y)`` takes a DataFrame (columns grouped into modalities; a modality whose cells are all empty in a row is
missing for that row) and trains the preset on it exactly as ``multimoe train`` would on a table file, holding out
the preset's validation share (``data.val_fraction``, stratified) for early stopping and checkpoint selection; no
test split is held out (the caller keeps its own test data). ``predict_proba``, ``predict``, ``score`` and
``classes_`` follow scikit-learn, so the estimator clones and works in ``cross_val_score``, ``GridSearchCV`` and a
``Pipeline``. Config overrides are keyword arguments with ``__`` for the dots (``train__epochs=20``,
``model__moe__router__top_k=1``, ``seed=3``); they are parameters like the others (``get_params``, ``set_params``,
grid search). Without ``modalities`` every column is one modality, so plain numeric arrays work too.

``save(path)`` writes one safetensors file: the weights (or a baseline's fitted arrays) with the config, the
preprocessing, the classes and the parameters as JSON metadata; ``MultiMoEClassifier.load(path)`` reads it without
executing code. The estimator also pickles (scikit-learn and joblib rely on it), but a pickle runs code when loaded:
load pickles only from sources you trust; use ``save``/``load`` to keep or share a model.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d

from multimoe.blend import build_trained
from multimoe.config import Config, ConfigError, all_keys, config_from_dict, to_dict
from multimoe.data.dataset import DataSchema
from multimoe.data.prepare import prepare
from multimoe.data.table import Table
from multimoe.errors import CheckpointError
from multimoe.predict import Predictor
from multimoe.registry import ARCHS, is_baseline, load_config, presets, presets_dir
from multimoe.runs.checkpoint import load_checkpoint, read_meta, save_checkpoint
from multimoe.runs.folder import RunFolder
from multimoe.train import train

LABEL = "y"  # the label column of the table built from (X, y): the class's index in ``classes_``
FORBIDDEN = ("data.spec", "data.name", "data.label", "data.test_fraction", "train.resume")  # fit decides these
NAMED = ("modalities", "categorical", "preset")


def config_key(name: str) -> str:
    """The dotted config key of an override parameter (``train__epochs`` -> ``train.epochs``), or a ValueError."""
    key = name.replace("__", ".")
    if key not in all_keys() or key in FORBIDDEN:
        valid = [k.replace(".", "__") for k in all_keys() if k not in FORBIDDEN and not k.startswith("data.synthetic")]
        why = "is set by fit" if key in FORBIDDEN else "is not a config key"
        raise ValueError(
            f"MultiMoEClassifier parameter {name!r} {why}; parameters are {', '.join(NAMED)} and config keys with __ "
            f"for dots, e.g. {', '.join(valid[:8])}, ..."
        )
    return key


class MultiMoEClassifier(ClassifierMixin, BaseEstimator):
    """A multimodal classifier trained by multimoe's ``train`` (see the module docstring).

    Parameters: ``modalities`` maps each modality name to its columns (None: all columns, one modality);
    ``categorical`` lists columns to one-hot encode (text columns are detected too); ``preset`` names a preset in
    ``configs/`` (``multimoe``, ``flexmoe``, ``logreg``, ...) or a YAML file; any other keyword is a config override
    with ``__`` for the dots."""

    def __init__(
        self,
        modalities: dict[str, list[str]] | None = None,
        categorical: list[str] | None = None,
        preset: str = "multimoe",
        **overrides: Any,
    ) -> None:
        self.modalities = modalities
        self.categorical = categorical
        self.preset = preset
        for name, value in overrides.items():
            setattr(self, name, value)

    # ----------------------------------------------------------------------------------------------- parameters

    def _override_names(self) -> list[str]:
        return [k for k in vars(self) if k not in NAMED and not k.startswith("_") and not k.endswith("_")]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The named parameters and every config override (``train__epochs``, ...)."""
        params = super().get_params(deep=False)
        params.update({k: getattr(self, k) for k in self._override_names()})
        return params

    def set_params(self, **params: Any) -> MultiMoEClassifier:
        """Set named parameters or config overrides (``set_params(train__epochs=5)``); as in scikit-learn, values
        and names are checked by ``fit`` (an unknown name: ValueError listing the valid ones)."""
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # an empty cell is a missing cell; an empty modality a missing modality
        tags.input_tags.categorical = True
        tags.input_tags.string = True
        return tags

    def _config(self, out_dir: str) -> Config:

        path = Path(self.preset)
        if path.suffix not in (".yaml", ".yml"):
            folder = presets_dir()
            path = folder / f"{self.preset}.yaml" if folder else path
            if not path.is_file():
                raise ConfigError(f"preset={self.preset!r} is not a preset; choose one of: {', '.join(presets())}")
        tree: dict = {"out_dir": out_dir, "train": {"progress": False}}
        for name in self._override_names():
            *parents, last = config_key(name).split(".")
            node = tree
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = getattr(self, name)
        return load_config(path, tree)

    # ----------------------------------------------------------------------------------------------------- data

    def _frame(self, X: Any, fitting: bool = False) -> pd.DataFrame:
        """X as a DataFrame with text column names; an array gets the fitted names (or x0, x1, ...)."""
        if isinstance(X, pd.DataFrame):
            if X.shape[0] == 0:
                raise ValueError(f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 is required.")
            return X.rename(columns=str) if not all(isinstance(c, str) for c in X.columns) else X
        array = check_array(X, dtype=None, ensure_all_finite="allow-nan")
        if not fitting:
            if array.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {array.shape[1]} features, but {type(self).__name__} is expecting {self.n_features_in_} "
                    "features as input."
                )
            names = self.columns_
        else:
            names = [f"x{j}" for j in range(array.shape[1])]
        return pd.DataFrame(array, columns=names)

    # ------------------------------------------------------------------------------------------- fit / predict

    def fit(self, X: Any, y: Any) -> MultiMoEClassifier:
        """Train the preset on (X, y): a stratified validation share of the rows selects the checkpoint."""

        frame = self._frame(X, fitting=True)
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if len(y) != len(frame):
            raise ValueError(f"X has {len(frame)} rows but y has {len(y)}")
        classes, index = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"a classifier needs at least two classes; y has one class ({classes[0]!r})")
        counts = np.bincount(index)
        if counts.min() < 2:
            raise ValueError(
                f"class '{classes[counts.argmin()]}' has a single row in y: fit holds out a stratified validation "
                "split (data__val_fraction), which needs at least two rows of every class"
            )
        modalities = self.modalities if self.modalities is not None else {"x": list(frame.columns)}
        label = LABEL if LABEL not in frame.columns else f"__{LABEL}__"
        table = Table.from_frame(frame.assign(**{label: index}), label, modalities, self.categorical or [], name="fit")
        out_dir = getattr(self, "out_dir", None)
        with tempfile.TemporaryDirectory(prefix="multimoe-estimator-") as tmp:
            cfg = self._config(out_dir or tmp)
            splits = prepare(table, cfg.data, cfg.seed, test_split=False)
            result = train(cfg, table=table, splits=splits)
            resolved = RunFolder(result.run_dir).read_config()  # as trained: the model config resolved for the data
        self.classes_ = classes
        self.n_features_in_ = frame.shape[1]
        self.columns_ = list(frame.columns)
        if isinstance(X, pd.DataFrame):
            self.feature_names_in_ = np.asarray(frame.columns, dtype=object)
        self.config_ = dataclasses.replace(resolved, out_dir="runs")
        self.predictor_ = Predictor.create(result.model, splits.schema, splits.preprocessing, name=type(self).__name__)
        self.best_epoch_ = result.best_epoch
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """N x C class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self)
        return self.predictor_.predict_proba(self._frame(X)).astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of every row (values of ``classes_``)."""
        probs_NC = self.predict_proba(X)
        return self.classes_[probs_NC.argmax(axis=1)]

    # ------------------------------------------------------------------------------------------------- files

    def save(self, path: str | Path) -> Path:
        """Write the fitted estimator to one safetensors file (loads without executing code; see ``load``)."""

        check_is_fitted(self)
        p = self.predictor_
        meta = {
            "estimator": {
                "params": self.get_params(),
                "classes": self.classes_.tolist(),
                "columns": self.columns_,
                "feature_names": hasattr(self, "feature_names_in_"),
                "best_epoch": self.best_epoch_,
            },
            "config": to_dict(self.config_),
            "schema": p.schema.to_dict(),
            "preprocessing": p.preprocessing,
        }
        json.dumps(meta)  # fails here, before writing, on a parameter JSON cannot hold
        save_checkpoint(Path(path), p.model, meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> MultiMoEClassifier:
        """A fitted estimator from ``save``'s file."""

        meta = read_meta(path)
        if "estimator" not in meta:
            raise CheckpointError(f"{path} is a multimoe checkpoint but not a saved MultiMoEClassifier")
        saved = meta["estimator"]
        cfg = config_from_dict(meta["config"])
        schema = DataSchema.from_dict(meta["schema"])
        if is_baseline(cfg.model.arch):
            model = ARCHS.build(cfg.model.arch, cfg.model, cfg.seed)
            model.load_state_dict(load_checkpoint(path)[0])
            model.schema = schema
        else:
            model = build_trained(cfg.model, schema)
            load_checkpoint(path, model, expect_model_config=meta["config"]["model"])
            model.eval()
        est = cls(**saved["params"])
        est.classes_ = np.asarray(saved["classes"])
        est.columns_ = list(saved["columns"])
        est.n_features_in_ = len(est.columns_)
        if saved["feature_names"]:
            est.feature_names_in_ = np.asarray(est.columns_, dtype=object)
        est.config_ = cfg
        est.best_epoch_ = saved["best_epoch"]
        est.predictor_ = Predictor.create(
            model, schema, meta["preprocessing"], cfg.train.eval_batch_size, name=str(path)
        )
        return est
