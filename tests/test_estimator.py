"""The scikit-learn estimator (multimoe/estimator.py): fit / predict on DataFrames of modalities, parameters that
clone, cross_val_score, GridSearchCV and Pipeline, save/load through safetensors, and scikit-learn's own checks."""

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils import estimator_checks as checks

from multimoe.estimator import MultiMoEClassifier

MODALITIES = {"a": ["a1", "a2"], "b": ["b1", "color"]}
TINY = {"model__dim": 8, "model__tokens": 2, "model__heads": 2, "model__moe__hidden": 8, "model__encoder__hidden": 8,
        "train__epochs": 6, "train__lr": 0.01}  # fmt: skip

# scikit-learn checks that cannot apply, with the reason (the others pass: test_scikit_learn_checks)
NOT_APPLICABLE = {
    "check_no_attributes_set_in_init": "config overrides are **kwargs kept as attributes so that get_params, "
    "set_params and clone see them; the check knows only the signature's parameters (it passes without overrides)",
    "check_dataframe_column_names_consistency": "not run by check_estimator; by hand it fails: columns are matched "
    "by name, a column or modality absent from the DataFrame is missing data (as in `multimoe predict`), and an "
    "array takes the fitted names by position, so other names are not an error",
}
# checks whose generated data have a class with a single row (or fewer rows of a class than the validation split
# needs): fit holds out a stratified validation split, as the presets do, and says so with a ValueError
TOO_FEW_ROWS = ["check_dont_overwrite_parameters", "check_f_contiguous_array_estimator", "check_dict_unchanged",
                "check_methods_sample_order_invariance", "check_methods_subset_invariance", "check_fit2d_1feature",
                "check_fit2d_predict1d"]  # fmt: skip
EXPECTED_FAILED = {**NOT_APPLICABLE, **dict.fromkeys(TOO_FEW_ROWS, "a class with a single row: no validation split")}


def frame(n: int = 150, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Two modalities, missing in some rows, a text category; three classes named by text."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 3, n)
    X = pd.DataFrame({"a1": k + rng.normal(0, 0.4, n), "a2": rng.normal(size=n), "b1": 2.0 * k + rng.normal(size=n),
                      "color": np.array(["red", "green", "blue"])[k]})  # fmt: skip
    X.loc[::6, ["b1", "color"]] = np.nan
    X.loc[1::9, ["a1", "a2"]] = np.nan
    return X, np.array(["low", "mid", "high"])[k]


def test_cross_val_score_on_a_small_table():
    X, y = frame()
    scores = cross_val_score(MultiMoEClassifier(MODALITIES, ["color"], "multimoe", **TINY), X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.7  # chance: 1/3


def test_fit_predict_classes_and_probabilities():
    X, y = frame()
    est = MultiMoEClassifier(MODALITIES, ["color"], "multimoe", **TINY).fit(X, y)
    assert est.classes_.tolist() == ["high", "low", "mid"]  # np.unique order, the original names
    probs = est.predict_proba(X)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)
    assert est.predict(X).tolist() == est.classes_[probs.argmax(axis=1)].tolist()
    assert est.score(X, y) == (est.predict(X) == y).mean()
    assert est.config_.train.epochs == 6 and est.config_.model.dim == 8  # the overrides reached the config


def test_parameters_clone_and_are_checked_by_fit():
    est = MultiMoEClassifier(MODALITIES, preset="logreg", model__logreg_c=0.5)
    assert est.get_params()["model__logreg_c"] == 0.5
    twin = clone(est).set_params(model__logreg_c=0.01, seed=3)
    assert twin.get_params() == {**est.get_params(), "model__logreg_c": 0.01, "seed": 3}
    assert est.get_params()["model__logreg_c"] == 0.5  # the original is untouched
    X, y = frame()
    assert twin.fit(X, y).config_.model.logreg_c == 0.01 and twin.config_.seed == 3
    with pytest.raises(ValueError, match="'train__epoch' is not a config key"):
        clone(est).set_params(train__epoch=3).fit(X, y)
    with pytest.raises(ValueError, match="'data__spec' is set by fit"):
        MultiMoEClassifier(data__spec="x.yaml").fit(X, y)
    with pytest.raises(ValueError, match="preset='nope' is not a preset"):
        MultiMoEClassifier(MODALITIES, preset="nope").fit(X, y)


def _log_b1(X: pd.DataFrame) -> pd.DataFrame:
    return X.assign(b1=np.sign(X["b1"]) * np.log1p(X["b1"].abs()))


def test_grid_search_and_pipeline():
    X, y = frame()
    grid = GridSearchCV(MultiMoEClassifier(MODALITIES, preset="logreg"), {"model__logreg_c": [1e-4, 1.0]}, cv=2)
    assert grid.fit(X, y).best_params_ == {"model__logreg_c": 1.0}  # 1e-4 shrinks every coefficient to ~0
    pipe = make_pipeline(FunctionTransformer(_log_b1), MultiMoEClassifier(MODALITIES, preset="logreg")).fit(X, y)
    direct = MultiMoEClassifier(MODALITIES, preset="logreg").fit(_log_b1(X), y)
    np.testing.assert_array_equal(pipe.predict_proba(X), direct.predict_proba(_log_b1(X)))
    pipe.set_params(multimoeclassifier__model__logreg_c=0.2)
    assert pipe.get_params()["multimoeclassifier__model__logreg_c"] == 0.2


@pytest.mark.parametrize("preset", ["multimoe", "hgb", "multimoe-blend", "multimoe-blend-svm"])
def test_save_and_load_without_pickle_and_pickle_too(preset, tmp_path):
    X, y = frame()
    est = MultiMoEClassifier(MODALITIES, ["color"], preset, **(TINY if preset != "hgb" else {})).fit(X, y)
    path = est.save(tmp_path / "model.safetensors")
    loaded = MultiMoEClassifier.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
    assert loaded.get_params() == est.get_params() and loaded.classes_.tolist() == est.classes_.tolist()
    unpickled = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(unpickled.predict_proba(X), est.predict_proba(X))


def test_plain_arrays_make_one_modality():
    X, y = frame()
    array = X[["a1", "b1"]].fillna(0).to_numpy()
    est = MultiMoEClassifier(preset="logreg").fit(array, y)
    assert est.n_features_in_ == 2 and not hasattr(est, "feature_names_in_")
    assert est.predictor_.modalities == {"x": ["x0", "x1"]}
    with pytest.raises(ValueError, match="X has 3 features, but MultiMoEClassifier is expecting 2"):
        est.predict(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="infinity"):  # NaN is a missing cell, inf an error
        est.predict(np.array([[0.0, 1.0], [np.nan, 1.0], [0.0, np.inf]]))


FAST_CHECKS = ["check_estimators_unfitted", "check_get_params_invariance", "check_set_params",
               "check_parameters_default_constructible", "check_estimators_pickle", "check_fit_check_is_fitted",
               "check_n_features_in_after_fitting", "check_classifiers_classes", "check_supervised_y_2d",
               "check_classifiers_one_label", "check_estimators_empty_data_messages", "check_complex_data"]  # fmt: skip


@pytest.mark.parametrize("check", FAST_CHECKS)
def test_scikit_learn_checks_that_run_fast(check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        getattr(checks, check)("MultiMoEClassifier", MultiMoEClassifier(preset="logreg"))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["logreg", "multimoe"])
def test_scikit_learn_checks(preset):
    """Every check of check_estimator passes but the ones listed with a reason (about 20 s for logreg, 3 min for
    the neural preset on 2 cores)."""
    extra = {} if preset == "logreg" else {**TINY, "train__epochs": 20}
    est = MultiMoEClassifier(preset=preset, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = checks.check_estimator(est, expected_failed_checks=EXPECTED_FAILED, on_fail=None, on_skip=None)
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    assert failed == [], failed
    xfailed = {r["check_name"] for r in results if r["status"] == "xfail"}
    assert xfailed <= set(EXPECTED_FAILED)
    assert sum(r["status"] == "passed" for r in results) >= 40
