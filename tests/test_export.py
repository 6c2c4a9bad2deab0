"""ONNX export (multimoe/export.py, `multimoe export`): under onnxruntime the exported graph gives PyTorch's
probabilities to 1e-4 on every modality combination of the test split; the server-side predictor applies the
preprocessing from the file's metadata without torch; baselines are refused."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_predict import cli, patients, train_run

from multimoe.evaluate import predict
from multimoe.export import ONNX_INSTALL, feed
from multimoe.predict import load_predictor
from multimoe.runs.reopen import open_run

ort = pytest.importorskip("onnxruntime", reason=f"ONNX export needs the onnx extra: {ONNX_INSTALL}")
pytest.importorskip("onnxscript", reason=f"ONNX export needs the onnx extra: {ONNX_INSTALL}")


def exported(folder: Path, preset: str) -> tuple[str, Path, dict]:
    run = train_run(folder, preset, "data.missing=mcar:0.5", "train.epochs=1")
    code, out, err = cli("export", run, "--format", "onnx", "--out", str(folder / "model.onnx"))
    assert code == 0, err
    return run, folder / "model.onnx", json.loads(out.splitlines()[-1])


def check_every_combination(run: str, path: Path) -> int:
    """Largest difference on each combination of the test split; returns how many combinations were compared."""
    opened = open_run(run)
    test = opened.splits.test
    expected = predict(opened.model, test, 512).probs_NC  # the sorted engine, not the export's dense one
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    combos = np.unique(test.combo_N.numpy())
    for c in combos:
        rows = np.flatnonzero(test.combo_N.numpy() == c)
        values = {m: v.numpy()[rows] for m, v in test.values.items()}
        missing = {m: v.numpy()[rows] for m, v in test.cell_missing.items()}
        inputs = feed(values, missing, test.present_NM.numpy()[rows], test.schema.modalities)
        got = session.run(["proba"], inputs)[0]
        np.testing.assert_allclose(got, expected[rows], atol=1e-4, rtol=0, err_msg=f"combination {c}")
    return len(combos)


@pytest.fixture(scope="module")
def multimoe_export(tmp_path_factory):
    return exported(tmp_path_factory.mktemp("export"), "multimoe")


def test_onnx_matches_pytorch_on_every_combination_of_the_test_split(multimoe_export):
    run, path, line = multimoe_export
    assert line == {"model": str(path), "bytes": path.stat().st_size}
    assert check_every_combination(run, path) >= 5  # 7 combinations of 3 modalities; mcar:0.5 shows most


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["flexmoe", "fusemoe", "smoe", "dense", "late_fusion"])
def test_every_neural_preset_exports(preset, tmp_path):
    run, path, _ = exported(tmp_path, preset)
    assert check_every_combination(run, path) >= 5


@pytest.mark.parametrize("option", ["model.members=2", "model.encoder.kind=periodic_mlp"])
def test_an_ensemble_and_periodic_embeddings_export(option, tmp_path):
    """model.members=2: the graph computes every member and the mean of their probabilities, as PyTorch does;
    periodic_mlp: the per-feature cosines, sines and maps."""
    run = train_run(tmp_path, "multimoe", "data.missing=mcar:0.5", "train.epochs=1", option)
    code, _, err = cli("export", run, "--format", "onnx", "--out", str(tmp_path / "model.onnx"))
    assert code == 0, err
    assert check_every_combination(run, tmp_path / "model.onnx") >= 5


def test_server_side_predictor_needs_no_torch(multimoe_export, tmp_path):
    run, path, _ = multimoe_export
    df = patients(40, seed=11)
    df.to_csv(tmp_path / "new.csv", index=False)
    probe = (
        "import sys, json, pandas as pd\n"
        "from multimoe.export import OnnxPredictor\n"
        f"p = OnnxPredictor({str(path)!r})\n"
        f"probs = p.predict_proba(pd.read_csv({str(tmp_path / 'new.csv')!r}))\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'probs': probs.tolist(), 'classes': p.classes_.tolist()}))"
    )
    out = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
    assert out["torch"] is False and out["classes"] == [0, 1, 2]
    np.testing.assert_allclose(out["probs"], load_predictor(run).predict_proba(df), atol=1e-4)


def test_export_of_a_baseline_is_refused_and_writes_nothing(tmp_path):
    run = train_run(tmp_path, "logreg")
    code, _, err = cli("export", run, "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and err.startswith("error: ") and "scikit-learn baseline" in err and run in err
    assert not (tmp_path / "m.onnx").exists()
