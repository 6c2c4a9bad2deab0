"""train.compile: torch.compile for training and evaluation on CPU, with a partial last batch (slow: compiles)."""

import math

import pytest
import torch
from conftest import tiny_config

from multimoe.runs.reopen import evaluate_run
from multimoe.train import train


@pytest.mark.slow
def test_compiled_training_and_evaluation_run_and_match_eager(tmp_path):
    overrides = ["train.epochs=2", "model.dropout=0.0"]  # 168 training rows in batches of 32: a partial last batch
    eager = train(tiny_config(tmp_path / "eager", *overrides))
    compiled = train(tiny_config(tmp_path / "compiled", *overrides, "train.compile=true"))
    assert compiled.summary["epochs_run"] == 2
    assert len(eager.summary["test"]["per_size"]) == len(compiled.summary["test"]["per_size"])
    assert math.isclose(compiled.val["loss"], eager.val["loss"], rel_tol=1e-3)
    result = evaluate_run(compiled.run_dir, ["data.missing=mcar:0.5", "train.eval_batch_size=17"])  # partial batches
    assert 0 <= result["test"]["overall"]["accuracy"] <= 1
    torch._dynamo.reset()
