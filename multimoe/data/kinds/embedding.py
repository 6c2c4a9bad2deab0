"""Embedding modalities: a fixed-length vector per row, from a file or a list column (Flex-MoE's MIMIC-IV form).

Spec entry (one of ``file`` and ``column``)::

    emb: {kind: embedding, file: emb.npy}             # .npy, .safetensors or .pt (weights only); one row per table row
    emb: {kind: embedding, file: emb.pt, key: notes}  # the tensor named 'notes' in a file that holds several
    emb: {kind: embedding, column: emb}               # a column of lists (or "[0.1, 0.2]" text) of equal length

A row whose every value is NaN (or whose cell is empty) has no embedding; NaN values inside a present row are
missing cells (0 with the missing mask, as for table columns). ``fit`` learns each feature's mean and standard
deviation on the training rows. Encoders: the table encoders (``patch_linear``, ``mlp``) read ``(x_BF, missing_BF)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from multimoe.data.kinds.base import (
    KindShape,
    ModalitySource,
    check_entry,
    finite_or_nan,
    frame_column,
    is_empty,
    read_array,
    resolve_path,
)
from multimoe.errors import DataError


class EmbeddingSource(ModalitySource):
    kind = "embedding"
    row_arrays = ("present_N", "values_NF")

    def __init__(self, name: str, values_NF: np.ndarray, index=None, where: str = "") -> None:
        values_NF = np.asarray(values_NF)
        super().__init__(name, len(values_NF), index, where)
        if values_NF.ndim != 2 or values_NF.shape[1] == 0:
            raise DataError(f"{self.label()}: expected one vector per row (rows x features), got {values_NF.shape}")
        self.values_NF = finite_or_nan(values_NF, self.label(), self.row_name)
        self.present_N = ~np.isnan(self.values_NF).all(axis=1)
        features = self.values_NF.shape[1]
        self.mean_F = np.zeros(features, dtype=np.float32)  # identity scaling until fit
        self.std_F = np.ones(features, dtype=np.float32)

    @classmethod
    def from_spec(cls, name: str, entry: dict, frame: pd.DataFrame, base_dir: Path | None = None, where: str = ""):
        check_entry(name, cls.kind, entry, (), ("file", "key", "column"), where)
        if ("file" in entry) == ("column" in entry):
            raise DataError(f"modality '{name}' (embedding){where} needs exactly one of 'file' and 'column'")
        label = f"modality '{name}' (embedding)"
        if "column" in entry:
            values = list_column(frame_column(frame, entry["column"], name, cls.kind, where), label, frame.index)
            return cls(name, values, frame.index, where)
        path = resolve_path(entry["file"], base_dir)
        values = read_array(path, entry.get("key"), label)
        if values.ndim != 2:
            raise DataError(f"{label}: {path} holds an array of shape {values.shape}; expected (rows, features)")
        if len(values) != len(frame):
            raise DataError(
                f"{label}: {path} has {len(values)} rows but the table{where} has {len(frame)}; an embedding file "
                "holds one row per table row, in the table's order (all-NaN for a row without one)"
            )
        return cls(name, values, frame.index, f" in {path.name}")

    def fit(self, rows: np.ndarray, present_N: np.ndarray | None = None) -> EmbeddingSource:
        rows = np.asarray(rows, dtype=np.int64)
        use = self.present_N[rows] if present_N is None else self.present_N[rows] & np.asarray(present_N)[rows]
        X = self.values_NF[rows[use]].astype(np.float64)
        observed = ~np.isnan(X)
        count = observed.sum(axis=0)
        mean = np.where(count > 0, np.nansum(X, axis=0) / np.maximum(count, 1), 0.0)
        var = np.where(count > 0, np.nansum((X - mean) ** 2, axis=0) / np.maximum(count, 1), 1.0)
        std = np.sqrt(var)
        self.mean_F = mean.astype(np.float32)
        self.std_F = np.where(std > 1e-12, std, 1.0).astype(np.float32)
        return self

    def input_shape(self) -> KindShape:
        return KindShape(self.kind, (self.values_NF.shape[1],))

    def fitted(self) -> dict:
        return {"mean": self.mean_F.tolist(), "std": self.std_F.tolist()}

    def load_fitted(self, state: dict) -> EmbeddingSource:
        self.mean_F = np.asarray(state["mean"], dtype=np.float32)
        self.std_F = np.asarray(state["std"], dtype=np.float32)
        return self

    def batch(self, rows: np.ndarray, keep: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        rows, read = self._rows_and_keep(rows, keep)
        x_BF = (self.values_NF[rows] - self.mean_F) / self.std_F
        x_BF[~read] = np.nan
        missing_BF = np.isnan(x_BF)
        return torch.from_numpy(np.where(missing_BF, 0.0, x_BF).astype(np.float32)), torch.from_numpy(missing_BF)


def list_column(column: pd.Series, label: str, index) -> np.ndarray:
    """N x F float32 from a column of equal-length lists or arrays (or their text, "[0.1, 0.2]"); NaN rows where a
    cell is empty."""
    vectors, width, first = [], None, None
    for pos, cell in enumerate(column.tolist()):
        if not isinstance(cell, (list, tuple, np.ndarray)) and is_empty(cell):
            vectors.append(None)
            continue
        if isinstance(cell, str):
            try:
                cell = json.loads(cell)
            except json.JSONDecodeError:
                raise DataError(
                    f"{label}: row {index[pos]} of column '{column.name}' holds {cell[:40]!r}, not a list of numbers "
                    "such as [0.1, 0.2]"
                ) from None
        try:
            vector = np.asarray(cell, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise DataError(
                f"{label}: row {index[pos]} of column '{column.name}' holds {str(cell)[:40]!r}, not a list of numbers"
            ) from None
        if width is None:
            width, first = vector.size, pos
        elif vector.size != width:
            raise DataError(
                f"{label}: row {index[pos]} of column '{column.name}' has {vector.size} values but row {index[first]} "
                f"has {width}; every embedding has the same length"
            )
        vectors.append(vector)
    if width is None:
        raise DataError(f"{label}: column '{column.name}' is empty in every row")
    out = np.full((len(vectors), width), np.nan, dtype=np.float32)
    for pos, vector in enumerate(vectors):
        if vector is not None:
            out[pos] = vector
    return out
