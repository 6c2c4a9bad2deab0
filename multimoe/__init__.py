"""multimoe: multimodal Mixture-of-Experts under missing modalities.

Flex-MoE (NeurIPS 2024) implemented faithfully, its competitors and simple baselines on one honest harness.

The names below load on first use (PEP 562), so ``import multimoe`` and ``multimoe --help`` load no torch.

Shape legend, for the whole package: a tensor's name ends in the letters of its dimensions (``scores_TE``,
``present_BM``), each letter with one meaning (torchtitan's convention).

    B  samples in a batch                     N  rows of a dataset or split
    M  modalities                             F  features (encoded columns) of one modality
    P  tokens per modality                    L  tokens per sample, M * P
    D  token width                            H  hidden width of an expert or feed-forward
    T  tokens in one call, B * L              E  experts (all pools)
    J  experts in one router's pool           K  experts per token (top-k)
    A  (token, slot) assignments, K * T, numbered slot-major (a = k * T + t)
    R  routed rows: the kept assignments, sorted by expert
    Q  rows of the padded layout: R plus padding
    S  modality combinations (non-empty subsets, 2^M - 1, published order)
    C  classes                                G  groups (of routers, or of tokens in a statistic)
    I, O  input and output width of a generic product
    U  steps of a series (its time grid)      V  channels of a signal or an image
    W  token ids of a text                    X, Y, Z  width, height and depth of an image
"""

from __future__ import annotations

import importlib

from multimoe.version import __version__

_EXPORTS = {
    "CheckpointError": "multimoe.errors",
    "ConfigError": "multimoe.config",
    "Config": "multimoe.config",
    "DataError": "multimoe.errors",
    "NonFiniteError": "multimoe.errors",
    "load_config": "multimoe.registry",
    "Table": "multimoe.data.table",
    "build_table": "multimoe.data.table",
    "prepare": "multimoe.data.prepare",
    "evaluate": "multimoe.evaluate",
    "build_model": "multimoe.model",
    "RunResult": "multimoe.train",
    "train": "multimoe.train",
    "evaluate_run": "multimoe.runs.reopen",
    "Predictor": "multimoe.predict",
    "load_predictor": "multimoe.predict",
    "MultiMoEClassifier": "multimoe.estimator",
    "export_onnx": "multimoe.export",
    "OnnxPredictor": "multimoe.export",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'multimoe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
