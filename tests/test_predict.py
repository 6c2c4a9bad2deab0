"""Predicting new rows with a trained run (multimoe/predict.py, `multimoe predict`): the same probabilities as
evaluation on the run's own test rows, the output table, chunks, absent modalities, unseen categories, --explain,
and every bad input ending in one `error:` line, exit status 2 and no output file."""

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from multimoe.cli import main
from multimoe.evaluate import predict
from multimoe.predict import load_predictor
from multimoe.runs.reopen import open_run

SPEC = "path: patients.csv\nlabel: y\nmodalities:\n  a: [a1, a2]\n  b: [b1, color]\n  c: [c1]\ncategorical: [color]\n"
TINY = ["model.dim=8", "model.tokens=2", "model.heads=2", "model.moe.hidden=8", "model.encoder.hidden=8",
        "train.epochs=3", "train.progress=false"]  # fmt: skip


def patients(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """A learnable table with ids, three modalities missing in some rows, missing cells and a text category."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    df = pd.DataFrame(
        {
            "pid": [f"p{i:05d}" for i in range(n)],  # leading zeros: the id must pass through as text
            "a1": y + rng.normal(0, 0.5, n),
            "a2": rng.normal(size=n),
            "b1": y * 2.0 + rng.normal(size=n),
            "color": np.array(["red", "green", "blue"])[(y + rng.integers(0, 2, n)) % 3],
            "c1": rng.normal(size=n),
            "y": y,
        }
    )
    i = np.arange(n)
    df.loc[i % 7 == 0, ["b1", "color"]] = np.nan  # modality b absent
    df.loc[i % 5 == 1, ["a1", "a2"]] = np.nan  # modality a absent
    df.loc[i % 11 == 2, "c1"] = np.nan  # modality c absent
    df.loc[i % 13 == 3, "a2"] = np.nan  # a missing cell inside a present modality
    return df


def write_table(folder: Path, df: pd.DataFrame | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (df if df is not None else patients()).to_csv(folder / "patients.csv", index=False)
    (folder / "spec.yaml").write_text(SPEC)
    return folder / "spec.yaml"


def train_run(folder: Path, preset: str, *overrides: str) -> str:
    spec = write_table(folder)
    args = ["train", f"configs/{preset}.yaml", f"data.spec={spec}", f"out_dir={folder / 'runs'}", *TINY, *overrides]
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
        assert main(args) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])["run_dir"]


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
    """A multimoe-preset run on the patients table (natural missingness)."""
    return train_run(tmp_path_factory.mktemp("run"), "multimoe")


@pytest.mark.parametrize(
    "preset,missing", [("multimoe", "natural"), ("flexmoe", "mcar:0.4"), ("hgb", "natural"), ("logreg", "mcar:0.4")]
)
def test_predictions_on_the_test_rows_equal_evaluation(tmp_path, preset, missing):
    run = train_run(tmp_path, preset, f"data.missing={missing}")
    opened = open_run(run)
    test = opened.splits.test
    expected = predict(opened.model, test, 512).probs_NC
    # the run's own test rows, with the modalities the protocol hid in evaluation blanked out
    rows = patients().iloc[opened.splits.split_rows["test"]].copy()
    present = test.present_NM.numpy()
    for m, columns in enumerate([["a1", "a2"], ["b1", "color"], ["c1"]]):
        rows.loc[~present[:, m], columns] = np.nan
    rows.to_csv(tmp_path / "test_rows.csv", index=False)
    code, out, _ = cli("predict", run, str(tmp_path / "test_rows.csv"), "--out", str(tmp_path / "p.csv"))
    assert code == 0
    got = pd.read_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(got[[f"proba_{c}" for c in range(3)]].to_numpy(), expected, atol=1e-6, rtol=0)
    code, eval_out, _ = cli("eval", run)
    assert (
        json.loads(out.splitlines()[-1])["metrics"]["accuracy"]
        == json.loads(eval_out.splitlines()[-1])["test"]["accuracy"]
    )


def test_output_table_keeps_ids_and_order_and_counts_combinations(run_dir, tmp_path):
    df = patients(90, seed=1).drop(columns="y").iloc[::-1]  # new rows, no label, not in index order
    df.to_csv(tmp_path / "new.csv", index=False)
    code, out, _ = cli("predict", run_dir, str(tmp_path / "new.csv"), "--out", str(tmp_path / "p.csv"), "--id", "pid")
    assert code == 0
    got = pd.read_csv(tmp_path / "p.csv", dtype={"pid": str})
    assert list(got.columns) == ["pid", "prediction", "proba_0", "proba_1", "proba_2", "observed"]
    assert got["pid"].tolist() == df["pid"].tolist()  # passed through, in input order, leading zeros kept
    probs = got[["proba_0", "proba_1", "proba_2"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)
    assert (got["prediction"].to_numpy() == probs.argmax(axis=1)).all()
    # observed combinations, worked out from the cells
    has = {m: df[cols].notna().any(axis=1).to_numpy() for m, cols in {"a": ["a1", "a2"], "b": ["b1", "color"],
                                                                     "c": ["c1"]}.items()}  # fmt: skip
    names = ["+".join(m for m in "abc" if has[m][i]) for i in range(len(df))]
    assert got["observed"].tolist() == names
    line = json.loads(out.splitlines()[-1])
    assert line["predictions"] == str(tmp_path / "p.csv") and line["rows"] == 90
    assert line["by_combination"] == pd.Series(names).value_counts().to_dict()
    assert "metrics" not in line  # no label column


def assert_nested_close(a, b, rel=1e-6):
    """Equal structure and labels; floats equal to ``rel``."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_nested_close(a[key], b[key], rel)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_nested_close(x, y, rel)
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=rel, nan_ok=True)
    else:
        assert a == b


def test_chunks_parquet_and_the_python_api_give_the_same_predictions(run_dir, tmp_path):
    df = patients(50, seed=2)
    df.to_csv(tmp_path / "new.csv", index=False)
    df.to_parquet(tmp_path / "new.parquet")
    predictor = load_predictor(run_dir)
    whole = predictor.predict_file(tmp_path / "new.csv", tmp_path / "whole.csv", "pid")
    chunked = predictor.predict_file(tmp_path / "new.parquet", tmp_path / "chunked.parquet", "pid", chunk_rows=7)
    a, b = pd.read_csv(tmp_path / "whole.csv", dtype={"pid": str}), pd.read_parquet(tmp_path / "chunked.parquet")
    pd.testing.assert_frame_equal(a.drop(columns=["proba_0", "proba_1", "proba_2"]),
                                  b.drop(columns=["proba_0", "proba_1", "proba_2"]), check_dtype=False)  # fmt: skip
    np.testing.assert_allclose(a.filter(like="proba").to_numpy(), b.filter(like="proba").to_numpy(), atol=1e-6)
    # the chunks run the network on other batch shapes: float32 sums differ in the last bits, the metrics by ~1e-9
    assert_nested_close(whole["by_combination"], chunked["by_combination"])
    assert_nested_close(whole["metrics"], chunked["metrics"])
    np.testing.assert_allclose(predictor.predict_proba(df), a.filter(like="proba").to_numpy(), atol=1e-6)
    assert predictor.predict(df).tolist() == a["prediction"].tolist()
    assert predictor.classes_.tolist() == [0, 1, 2]  # the label was integer: so are the class names


def test_a_modality_absent_from_the_file_is_missing_everywhere_and_said_once(run_dir, tmp_path):
    df = patients(40, seed=3).drop(columns=["c1", "y"])
    df = df[df[["a1", "a2", "b1", "color"]].notna().any(axis=1)]
    df.to_csv(tmp_path / "no_c.csv", index=False)
    code, out, err = cli("predict", run_dir, str(tmp_path / "no_c.csv"), "--out", str(tmp_path / "p.csv"))
    assert code == 0
    assert err.count("modality 'c'") == 1 and "missing in every row" in err
    assert json.loads(out.splitlines()[-1])["absent_modalities"] == ["c"]
    got = pd.read_csv(tmp_path / "p.csv")
    assert not got["observed"].str.contains("c").any()
    blanked = load_predictor(run_dir).predict_proba(df.assign(c1=np.nan))  # the same rows with c's cells empty
    np.testing.assert_allclose(got.filter(like="proba").to_numpy(), blanked, atol=1e-6)


def test_unseen_categories_are_counted_and_encoded_as_in_evaluation(run_dir, tmp_path):
    df = patients(30, seed=4)
    df.loc[[3, 4, 5], "color"] = "ultraviolet"
    df.loc[[3, 4, 5], "b1"] = 0.5
    df.to_csv(tmp_path / "new.csv", index=False)
    summary = load_predictor(run_dir).predict_file(tmp_path / "new.csv")
    assert summary["unknown_categories"] == {"color": 3} and summary["predictions"] is None
    pre = load_predictor(run_dir).preprocessor
    enc = pre.transform_frame(df.iloc[[3]])
    width = len(pre.coders["b"][1].categories)
    assert (enc.values["b"][0, 1 : 1 + width] == 0).all() and not enc.missing["b"][0].any()


def test_explain_lists_the_heaviest_experts_of_each_observed_modality(run_dir, tmp_path):
    df = patients(20, seed=5)
    predictor = load_predictor(run_dir)
    table, data, _, _ = predictor.predict_table(df, "pid", explain=True)
    assert {"experts_a", "experts_b", "experts_c"} <= set(table.columns)
    captured = []
    predict(predictor.model, data, 512, on_output=lambda out, batch: captured.append(out.moe[0].routing))
    w_BMPE = captured[0].dense_weights().view(len(df), 3, 2, -1)  # 3 modalities x 2 tokens
    mean_BME = w_BMPE.mean(dim=2)
    for row in range(len(df)):
        for m, mod in enumerate("abc"):
            cell = table[f"experts_{mod}"].iloc[row]
            if not data.present_NM[row, m]:
                assert cell == ""
                continue
            pairs = [p.split(":") for p in cell.split(";")]
            top = mean_BME[row, m].topk(len(pairs))
            assert [int(e) for e, _ in pairs] == top.indices.tolist()
            np.testing.assert_allclose([float(w) for _, w in pairs], top.values.numpy(), atol=5e-4)


def test_every_preset_predicts_new_rows_from_python(tmp_path):
    for preset in ("late_fusion", "logreg"):
        run = train_run(tmp_path / preset, preset, "train.epochs=1")
        predictor = load_predictor(run)
        probs = predictor.predict_proba(patients(12, seed=6))
        assert probs.shape == (12, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-6)


def _no_preprocess(run_dir: str, tmp: Path) -> str:
    copy = tmp / "old-run"
    shutil.copytree(run_dir, copy)
    (copy / "preprocess.json").unlink()
    return str(copy)


def _late_text(tmp: Path) -> list[str]:
    df = patients(60, seed=7).astype({"a1": object})
    df.loc[45, "a1"] = "n/a?"  # in the last of several chunks: earlier chunks were predicted already
    df.to_csv(tmp / "new.csv", index=False)
    return [str(tmp / "new.csv")]


def _empty_row(tmp: Path) -> list[str]:
    df = patients(30, seed=8)
    df.loc[17, ["a1", "a2", "b1", "color", "c1"]] = np.nan
    df.to_csv(tmp / "new.csv", index=False)
    return [str(tmp / "new.csv")]


def _good(tmp: Path) -> list[str]:
    patients(30, seed=9).to_csv(tmp / "new.csv", index=False)
    return [str(tmp / "new.csv")]


# id -> (arguments after `multimoe predict`, built from the run folder and a temporary folder; words the message has)
PREDICT_CASES = {
    "id column not in the file": (lambda r, t: [r, *_good(t), "--id", "patient"], ["'patient'", "new.csv"]),
    "text in a numeric column": (lambda r, t: [r, *_late_text(t)], ["'a1'", "row 45", "'n/a?'", "new.csv"]),
    "row with no modality": (lambda r, t: [r, *_empty_row(t)], ["row 17", "new.csv", "no present modality"]),
    "unknown run folder": (lambda r, t: [str(t / "nope"), *_good(t)], ["nope", "not a run folder"]),
    "run without its preprocessing": (lambda r, t: [_no_preprocess(r, t), *_good(t)], ["preprocess.json", "retrain"]),
    "data file missing": (lambda r, t: [r, str(t / "gone.csv")], ["gone.csv", "does not exist"]),
    "no training column": (
        lambda r, t: [r, str(t / "x.csv")] if (t / "x.csv").write_text("u,v\n1,2\n") else [],
        ["x.csv", "none of the training columns"],
    ),
    "output over the input": (lambda r, t: [r, *_good(t), "--out", str(t / "new.csv")], ["--out", "input file"]),
}


@pytest.mark.parametrize("name", list(PREDICT_CASES))
def test_bad_predict_input_exits_2_with_one_error_line_and_writes_nothing(name, run_dir, tmp_path):
    make, words = PREDICT_CASES[name]
    args = make(run_dir, tmp_path)
    out = ["--out", str(tmp_path / "p.csv")] if "--out" not in args else []
    code, _, err = cli("predict", *args, *out)
    assert code == 2, err
    lines = [line for line in err.splitlines() if not line.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    assert not (tmp_path / "p.csv").exists()
    assert not list(tmp_path.glob(".p.csv.*")), "no temporary file left behind"


def test_explain_needs_a_moe_model(tmp_path):
    run = train_run(tmp_path, "hgb")
    patients(10).to_csv(tmp_path / "new.csv", index=False)
    code, _, err = cli("predict", run, str(tmp_path / "new.csv"), "--explain")
    assert code == 2 and "no MoE layer" in err
