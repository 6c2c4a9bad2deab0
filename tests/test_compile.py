"""train.compile: torch.compile for training and evaluation on CPU, with a partial last batch.

The fast test traces the model with dynamo (graph breaks around the eager MoE engine, parameter names kept) on the
``eager`` backend, which skips inductor's C++ code generation; the slow test runs the real default backend."""

import functools
import math

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from multimoe.runs.reopen import evaluate_run
from multimoe.train import train

OVERRIDES = ["train.epochs=2", "model.dropout=0.0"]  # 168 training rows in batches of 32: a partial last batch


@pytest.fixture
def eager_backend(monkeypatch):
    """``Module.compile`` on dynamo's ``eager`` backend: the tracing and graph breaks of train.compile, no codegen."""
    monkeypatch.setattr(torch.nn.Module, "compile", functools.partialmethod(torch.nn.Module.compile, backend="eager"))
    yield
    torch._dynamo.reset()


def test_compiled_training_traces_and_matches_eager(tmp_path, eager_backend):
    eager = train(tiny_config(tmp_path / "eager", *OVERRIDES, "model.moe.router.kind=softmax_topk"))
    compiled = train(tiny_config(tmp_path / "compiled", *OVERRIDES, "model.moe.router.kind=softmax_topk",
                                 "train.compile=true"))  # fmt: skip
    assert compiled.model._compiled_call_impl is not None and eager.model._compiled_call_impl is None
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # dynamo traced graphs around the engine
    assert compiled.summary["epochs_run"] == 2
    assert math.isclose(compiled.val["loss"], eager.val["loss"], rel_tol=1e-4)
    assert compiled.test["overall"]["accuracy"] == eager.test["overall"]["accuracy"]
    a, b = load_file(eager.run_dir / "best.safetensors"), load_file(compiled.run_dir / "best.safetensors")
    assert a.keys() == b.keys()  # checkpoints keep the plain model's parameter names
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    result = evaluate_run(compiled.run_dir, ["data.missing=mcar:0.5", "train.eval_batch_size=17"])  # partial batches
    assert result["test"]["overall"]["n"] == compiled.test["overall"]["n"]


@pytest.mark.slow
def test_compiled_training_and_evaluation_run_and_match_eager(tmp_path):
    eager = train(tiny_config(tmp_path / "eager", *OVERRIDES))
    compiled = train(tiny_config(tmp_path / "compiled", *OVERRIDES, "train.compile=true"))
    assert compiled.summary["epochs_run"] == 2
    assert len(eager.summary["test"]["per_size"]) == len(compiled.summary["test"]["per_size"])
    assert math.isclose(compiled.val["loss"], eager.val["loss"], rel_tol=1e-3)
    result = evaluate_run(compiled.run_dir, ["data.missing=mcar:0.5", "train.eval_batch_size=17"])  # partial batches
    assert result["test"]["overall"]["n"] == compiled.test["overall"]["n"]
    torch._dynamo.reset()
