"""Modality kinds beyond table columns: series, image, text and embedding sources (one module each).

A table's modality is either a list of its columns (tabular, prepared by ``multimoe.data.prepare``) or a mapping
with a ``kind``, which ``build_source`` turns into a ``ModalitySource`` (``base``): it tells which rows have the
modality, fits what it needs on training rows, and makes batch tensors for an encoder of its kind. Spec entries::

    modalities:
      labs: [alb, bili]                                              # tabular, as always
      scan: {kind: image, column: scan_path, root: images/}          # image.py
      notes: {kind: text, column: note}                              # text.py
      emb: {kind: embedding, file: emb.npy}                          # embedding.py
      vitals: {kind: series, table: vitals.csv, id: pid, time: t, channel: ch, value: v}   # series.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from multimoe.data.kinds.base import KindShape, ModalitySource
from multimoe.data.kinds.embedding import EmbeddingSource
from multimoe.data.kinds.image import ImageSource
from multimoe.data.kinds.series import SeriesInput, SeriesSource
from multimoe.data.kinds.text import TextSource
from multimoe.errors import DataError

KINDS: dict[str, type[ModalitySource]] = {
    "series": SeriesSource,
    "image": ImageSource,
    "text": TextSource,
    "embedding": EmbeddingSource,
}
ENCODER_KIND = {"table": "table", "embedding": "table", "series": "series", "image": "image", "text": "text"}
"""The encoders a modality kind takes (registry ``ENCODERS`` entries carry this kind): embeddings use table encoders."""

__all__ = ["KINDS", "ENCODER_KIND", "AbsentSource", "KindShape", "ModalitySource", "SeriesInput", "build_source",
           "empty_inputs", "rebuild_source"]  # fmt: skip
__all__ += [cls.__name__ for cls in KINDS.values()]


def build_source(name: str, entry: dict, frame: pd.DataFrame, base_dir: Path | None = None,
                 where: str = "") -> ModalitySource:  # fmt: skip
    """The source of modality ``name`` from its spec entry (a mapping with ``kind``); paths in the entry are
    relative to ``base_dir`` (the spec file's folder)."""
    if not isinstance(entry, dict):
        raise DataError(
            f"modality '{name}'{where}: expected a list of columns or a mapping with 'kind' "
            f"({', '.join(KINDS)}), got {entry!r}"
        )
    kind = entry.get("kind")
    if kind not in KINDS:
        raise DataError(
            f"modality '{name}'{where}: 'kind' must be one of {', '.join(KINDS)} (or give a list of columns for a "
            f"tabular modality); got {kind!r}"
        )
    source = KINDS[kind].from_spec(str(name), dict(entry), frame, base_dir, where)
    source.entry = dict(entry)  # what `multimoe predict` rebuilds the modality from for new rows
    return source


def rebuild_source(name: str, state: dict, entry: dict, frame: pd.DataFrame, base_dir: Path | None = None,
                   where: str = "") -> ModalitySource:  # fmt: skip
    """Modality ``name`` of new rows (``multimoe predict``) from a spec ``entry`` (the training one, or the new
    rows' spec's) read as in training: the training sizes, channels and steps imposed (``entry_for_new_rows``), the
    fitted statistics of ``state`` (``ModalitySource.state``) taken over; a DataError when the input shape still
    differs from training's."""
    kind = state["kind"]
    if not isinstance(entry, dict) or entry.get("kind") != kind:
        got = entry.get("kind") if isinstance(entry, dict) else "a list of columns"
        raise DataError(f"modality '{name}'{where} is {got!r} here but was {kind} in training")
    source = build_source(name, KINDS[kind].entry_for_new_rows(entry, state), frame, base_dir, where)
    source.load_fitted(state)
    expected = KindShape.from_dict(state["shape"])
    if source.input_shape() != expected:
        raise DataError(
            f"{source.label()}: its inputs have the shape {list(source.input_shape().shape)} here but "
            f"{list(expected.shape)} in training (e.g. another number of steps or features)"
        )
    return source


def empty_inputs(shape: KindShape, rows: int, missing: bool = True) -> tuple:
    """``(x, missing)`` of ``rows`` rows of a modality as batches hold them: zeros (text: padding ids), every
    position unobserved (``missing``) or observed."""
    if shape.kind == "series":
        V, U = shape.shape
        x = SeriesInput(torch.zeros(rows, V, U), torch.zeros(rows, U))
        return x, torch.full((rows, V, U), missing)
    if shape.kind == "image":
        return torch.zeros(rows, *shape.shape), torch.full((rows, *shape.shape[1:]), missing)
    dtype = torch.long if shape.kind == "text" else torch.float32
    return torch.zeros(rows, *shape.shape, dtype=dtype), torch.full((rows, *shape.shape), missing)


class AbsentSource(ModalitySource):
    """A modality of another kind that new rows do not give (``multimoe predict`` from a table file without its
    column, or a spec without its entry): absent in every row, its batches as an absent row's (zeros, all missing)."""

    def __init__(self, name: str, state: dict, rows: int, where: str = "") -> None:
        super().__init__(name, rows, None, where)
        self.kind = str(state["kind"])
        self.entry = state.get("entry")
        self.shape = KindShape.from_dict(state["shape"])
        self.present_N = np.zeros(rows, dtype=bool)

    def input_shape(self) -> KindShape:
        return self.shape

    def batch(self, rows: np.ndarray, keep: np.ndarray | None = None) -> tuple:
        return empty_inputs(self.shape, len(np.asarray(rows).reshape(-1)))
