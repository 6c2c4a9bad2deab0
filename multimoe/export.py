"""Serving a trained neural model outside PyTorch: ONNX export, and a predictor that runs the exported file.

``export_onnx(RUN_DIR)`` writes the run's best model as an ONNX graph (``RUN_DIR/model.onnx`` by default). Its inputs
are the preprocessed modality tensors and the presence mask, one batch dimension for all:

    x_<modality>        B x F float32  the modality's encoded features (0 in missing cells; anything when absent)
    missing_<modality>  B x F bool     its missing-cell mask
    present             B x M bool     which modalities each row has (modalities in the model's order)

and its output ``proba`` (B x C float32) the class probabilities, classes in the run's order. The graph zeroes
absent modalities and computes each row's combination itself; every row needs one present modality.

The preprocessing is a documented step, not part of the graph: the run's ``preprocess.json`` (also stored in the
ONNX file's metadata under ``multimoe.preprocessing``) holds the columns, scaling statistics, categories and classes,
and ``multimoe.data.preprocess.Preprocessor`` (no torch needed) applies it to a DataFrame, as ``OnnxPredictor``
does; its module docstring spells the transform out for a server in another language.

Models with modalities of other kinds (series, image, text, embedding: ``multimoe.data.kinds``) are refused: their
inputs are no table rows and reading them (files, hashing, resampling) is not part of the documented transform; they
are served with ``multimoe predict`` / ``load_predictor``.

The MoE engine (a custom autograd Function planned with numpy) is not traceable; the export swaps each MoE layer's
engine for ``multimoe.moe.dense_expert_ffn``, which computes the same outputs densely (every expert on every token),
and checks the exported graph against the PyTorch model under onnxruntime before it writes the file. Needs the
``onnx`` extra: ``pip install 'multimoe[onnx]'`` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from multimoe.config import ConfigError
from multimoe.data.preprocess import Preprocessor

ONNX_INSTALL = "pip install 'multimoe[onnx]'  (onnx, onnxruntime, onnxscript)"
METADATA_KEY = "multimoe.preprocessing"
OPSET = 18
TOLERANCE = 1e-4  # the export's check: largest difference of a probability between ONNX and PyTorch


def input_names(modalities: list[str] | tuple[str, ...]) -> list[str]:
    """The graph's inputs, in order: every modality's values, every modality's missing-cell mask, the presence mask."""
    return [f"x_{m}" for m in modalities] + [f"missing_{m}" for m in modalities] + ["present"]


def feed(values: dict, missing: dict, present_NM: np.ndarray, modalities: list[str] | tuple[str, ...]) -> dict:
    """The graph's input dict from encoded rows (``Preprocessor.transform_frame`` or ``MultimodalData``)."""
    arrays = [np.asarray(values[m], dtype=np.float32) for m in modalities]
    arrays += [np.asarray(missing[m], dtype=np.bool_) for m in modalities]
    arrays.append(np.asarray(present_NM, dtype=np.bool_))
    return dict(zip(input_names(modalities), arrays))


def _module_for_export(model):
    """The model's evaluation forward with flat tensor inputs (see the module docstring) -> class probabilities."""
    import torch

    from multimoe.batch import Batch, combination_table

    class Exportable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.modalities = list(model.schema.modalities)
            M = len(self.modalities)
            self.register_buffer("combination_of_bits", combination_table(M), persistent=False)
            self.register_buffer("bit_M", 1 << torch.arange(M), persistent=False)

        def forward(self, *tensors):
            M = len(self.modalities)
            present_BM = tensors[2 * M]
            inputs = {
                m: tensors[i] * present_BM[:, i : i + 1].to(tensors[i].dtype) for i, m in enumerate(self.modalities)
            }
            missing = {m: tensors[M + i] & present_BM[:, i : i + 1] for i, m in enumerate(self.modalities)}
            combo_B = self.combination_of_bits[(present_BM.long() * self.bit_M).sum(dim=1)]
            out = self.model(Batch(inputs, missing, present_BM, combo_B, combo_B))
            return out.logits_BC.float().softmax(dim=1)

    return Exportable().eval()


@contextlib.contextmanager
def dense_engines(model):
    """Every MoE layer of ``model`` runs ``dense_expert_ffn`` (traceable) instead of the sorted engine, inside."""
    from multimoe.moe import MoE, dense_expert_ffn

    layers = [m for m in model.modules() if isinstance(m, MoE)]
    saved = [m.engine for m in layers]
    for m in layers:
        m.engine = dense_expert_ffn
    try:
        yield model
    finally:
        for m, engine in zip(layers, saved):
            m.engine = engine


def _example(schema, rows: int = 3):
    """Example inputs (all modalities present) for tracing; the batch dimension stays symbolic."""
    import torch

    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(rows, f, generator=gen) for f in schema.features]
    masks = [torch.zeros(rows, f, dtype=torch.bool) for f in schema.features]
    return (*xs, *masks, torch.ones(rows, schema.num_modalities, dtype=torch.bool))


def export_onnx(run_dir: str | Path, out: str | Path | None = None, check_rows: int = 64) -> Path:
    """Export a run's best neural model to ONNX (``out``, default ``RUN_DIR/model.onnx``), written whole or not at
    all, with the preprocessing in its metadata. Before writing, the graph is run under onnxruntime on
    ``check_rows`` random rows of every modality combination and must match PyTorch within ``TOLERANCE``."""
    import torch

    from multimoe.files import atomic_write
    from multimoe.registry import is_baseline
    from multimoe.runs.folder import RunFolder
    from multimoe.runs.reopen import load_model

    folder = RunFolder.open(run_dir)
    cfg = folder.read_config()
    if is_baseline(cfg.model.arch):
        raise ConfigError(
            f"{folder.path} is a scikit-learn baseline run ({cfg.model.arch}): ONNX export is for the neural presets; "
            f"`multimoe predict {folder.path} DATA` predicts with it"
        )
    preprocessing = folder.read_preprocess()
    if preprocessing is None:
        raise ConfigError(
            f"{folder.path} has no {RunFolder.PREPROCESS} (written before runs kept their preprocessing): a server "
            "could not encode rows as its training rows were; retrain it to export"
        )
    _onnx_modules()  # before the work: a missing extra fails with the install command
    _, model = load_model(folder)
    other = [(m, s.kind) for m, s in zip(model.schema.modalities, model.schema.inputs) if s.kind != "table"]
    if other:  # their inputs are no table rows, and reading them (files, hashing) is not the documented transform
        kinds = ", ".join(f"{m} ({kind})" for m, kind in other)
        raise ConfigError(
            f"ONNX export takes models of table modalities only; {folder.path} has {kinds}: serve it with "
            f"`multimoe predict {folder.path} DATA` or multimoe.load_predictor"
        )
    model.eval()
    out = Path(out) if out is not None else folder.onnx
    module = _module_for_export(model)
    batch = torch.export.Dim("batch", min=1)
    quiet = contextlib.redirect_stdout(io.StringIO())  # the exporter prints its progress on stdout
    with dense_engines(model), torch.no_grad(), quiet, warnings.catch_warnings(), _quiet_logger("torch.onnx"):
        warnings.simplefilter("ignore")
        example = _example(model.schema)
        program = torch.onnx.export(
            module,
            example,
            input_names=input_names(model.schema.modalities),
            output_names=["proba"],
            dynamic_shapes=(tuple({0: batch} for _ in example),),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    for key, value in {
        METADATA_KEY: json.dumps(preprocessing),
        "multimoe.schema": json.dumps(model.schema.to_dict()),
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    check_export(model, data, check_rows)
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
    return out


def check_export(model, onnx_bytes: bytes, rows: int = 64) -> float:
    """The largest difference between the ONNX graph's probabilities and the PyTorch model's (sorted engine) on
    ``rows`` random rows per modality combination; a CheckpointError above ``TOLERANCE``."""
    import torch

    from multimoe.batch import combinations
    from multimoe.data.dataset import MultimodalData
    from multimoe.errors import CheckpointError
    from multimoe.evaluate import predict

    _, ort = _onnx_modules()
    schema = model.schema
    M = schema.num_modalities
    rows = max(2, min(rows, 4096 // len(combinations(M))))  # at most ~4096 rows when modalities are many
    present = np.concatenate([np.repeat(np.isin(np.arange(M), c)[None], rows, axis=0) for c in combinations(M)])
    gen = torch.Generator().manual_seed(0)
    n = len(present)
    values = {m: torch.randn(n, f, generator=gen) for m, f in zip(schema.modalities, schema.features)}
    missing = {m: torch.rand(n, f, generator=gen) < 0.1 for m, f in zip(schema.modalities, schema.features)}
    values = {m: v.masked_fill(missing[m], 0.0) for m, v in values.items()}
    data = MultimodalData(
        schema, values, missing, torch.from_numpy(present), torch.zeros(n, dtype=torch.long), np.arange(n)
    )
    expected = predict(model, data, 512).probs_NC
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run(["proba"], feed(values, missing, present, schema.modalities))[0]
    diff = float(np.abs(got - expected).max())
    if not diff <= TOLERANCE:
        raise CheckpointError(f"the exported graph differs from the PyTorch model by {diff:.2e} > {TOLERANCE:g}")
    return diff


class OnnxPredictor:
    """Predictions from an exported file with onnxruntime and the preprocessing in its metadata; imports no torch.
    ``predict_proba(df)``, ``predict(df)`` and ``classes_`` as ``multimoe.predict.Predictor``."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        _, ort = _onnx_modules()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ConfigError(f"{path} is not an ONNX file written by `multimoe export` (no {METADATA_KEY} metadata)")
        preprocessing = json.loads(meta[METADATA_KEY])
        self.preprocessor = Preprocessor.from_dict(preprocessing)
        self.modalities = list(self.preprocessor.coders)
        classes = preprocessing["classes"]
        integer = preprocessing["label_kind"] == "integer"
        self.classes_ = np.array([int(c) for c in classes]) if integer else np.array(classes)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        enc = self.preprocessor.transform_frame(frame.rename(columns=str))
        return self.session.run(["proba"], feed(enc.values, enc.missing, enc.present_NM, self.modalities))[0]

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.classes_[self.predict_proba(frame).argmax(axis=1)]


@contextlib.contextmanager
def _quiet_logger(name: str):
    """Only errors from the logger ``name`` inside (the exporter logs that optional torchvision ops are skipped)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _onnx_modules():
    """onnx and onnxruntime, or a ConfigError with the install command."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ConfigError(f"ONNX export needs onnx and onnxruntime ({e}); install them with: {ONNX_INSTALL}") from None
    return onnx, onnxruntime
