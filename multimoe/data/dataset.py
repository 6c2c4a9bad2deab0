"""Multimodal data: preprocessed tensors of table modalities, sources of the other kinds, presence and labels, cut
into batches by index (in this process, or in data-loader workers).

Shape letters: the legend in ``multimoe/__init__.py`` (N rows, M modalities, F features of a modality).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from multimoe.batch import Batch, combination_index
from multimoe.data.kinds.base import KindShape, ModalitySource
from multimoe.errors import DataError


@dataclass(frozen=True)
class DataSchema:
    """What a model needs to know about the data: modality names, their encoded widths, the classes, and each
    modality's kind and per-sample input shape (``inputs``; default: every modality a table of its width)."""

    modalities: tuple[str, ...]
    features: tuple[int, ...]  # encoded width per modality (a source's: the values per sample, prod of its shape)
    classes: tuple[str, ...]
    inputs: tuple[KindShape, ...] = ()  # per modality: kind and shape (``KindShape``); () = tables of ``features``

    def __post_init__(self) -> None:
        if not self.inputs:  # schemas of tables only (and those written before kinds existed) leave it out
            object.__setattr__(self, "inputs", tuple(KindShape("table", (int(f),)) for f in self.features))
        if len(self.inputs) != len(self.modalities):
            raise ValueError(f"{len(self.inputs)} input shapes for {len(self.modalities)} modalities")

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def tables_only(self) -> bool:
        return all(s.kind == "table" for s in self.inputs)

    def to_dict(self) -> dict:
        out = {"modalities": list(self.modalities), "features": list(self.features), "classes": list(self.classes)}
        if not self.tables_only:  # tables-only schemas stay as they were written before kinds existed
            out["inputs"] = [s.to_dict() for s in self.inputs]
        return out

    @classmethod
    def from_dict(cls, d: dict) -> DataSchema:
        inputs = tuple(KindShape.from_dict(s) for s in d.get("inputs", ()))
        return cls(tuple(d["modalities"]), tuple(int(f) for f in d["features"]), tuple(d["classes"]), inputs)


@dataclass
class MultimodalData:
    """One split. Table modalities are preprocessed tensors (``values``, 0 in missing cells); the other kinds are
    ``sources`` (``multimoe.data.kinds``) that make their tensors batch by batch (images read from disk then), for
    the table rows ``rows_N``. A modality's inputs are zeroed (masks False) in batches where it is absent, so
    changing ``present_NM`` (another protocol) needs no re-preprocessing.

    ``workers`` > 0 builds the batches of data with sources in that many data-loader worker processes."""

    schema: DataSchema
    values: dict[str, Tensor]  # table modality -> N x F float32
    cell_missing: dict[str, Tensor]  # table modality -> N x F bool
    present_NM: Tensor  # bool
    labels_N: Tensor  # long
    rows_N: np.ndarray  # row positions in the source table (for messages, and the rows sources read)
    sources: dict[str, ModalitySource] = field(default_factory=dict)  # modality -> its source (not tables)
    workers: int = 0  # data-loader worker processes for batches with sources (0: in this process)
    combo_N: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.combo_N = combination_index(self.present_NM)

    def __len__(self) -> int:
        return int(self.labels_N.shape[0])

    def batch(self, idx: Tensor | np.ndarray | slice) -> Batch:
        if isinstance(idx, np.ndarray):
            idx = torch.from_numpy(idx)
        present = self.present_NM[idx]
        rows = None
        inputs, missing = {}, {}
        for m, name in enumerate(self.schema.modalities):
            keep = present[:, m : m + 1]
            if name in self.sources:  # built for these rows only; absent rows read nothing
                if rows is None:
                    rows = self.rows_N[np.arange(len(self))[idx] if isinstance(idx, slice) else idx.numpy()]
                x, miss = self.sources[name].batch(rows, keep[:, 0].numpy())
                inputs[name] = x
                missing[name] = miss & keep.view(-1, *[1] * (miss.dim() - 1))  # masks are of present modalities
                continue
            inputs[name] = self.values[name][idx] * keep
            missing[name] = self.cell_missing[name][idx] & keep
        return Batch(inputs, missing, present, self.labels_N[idx], self.combo_N[idx])

    def batches(self, batch_size: int, order: Tensor | None = None):
        n = len(self)
        order = torch.arange(n) if order is None else order
        if self.workers > 0 and self.sources:
            yield from self._loader_batches(batch_size, order)
            return
        for start in range(0, n, batch_size):
            yield self.batch(order[start : start + batch_size])

    def _loader_batches(self, batch_size: int, order: Tensor):
        """The batches of ``batches``, built in ``workers`` data-loader processes (in order); a worker's DataError
        comes back as the same one-line DataError."""
        loader = torch.utils.data.DataLoader(
            _Batches(self, order, batch_size), batch_size=None, shuffle=False, num_workers=self.workers
        )
        for batch in loader:
            if isinstance(batch, _Failed):
                raise DataError(batch.message)
            yield batch

    def subset(self, idx: np.ndarray) -> MultimodalData:
        t = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        return MultimodalData(
            self.schema,
            {k: v[t] for k, v in self.values.items()},
            {k: v[t] for k, v in self.cell_missing.items()},
            self.present_NM[t],
            self.labels_N[t],
            self.rows_N[np.asarray(idx)],
            self.sources,
            self.workers,
        )

    def with_presence(self, present_NM: Tensor | np.ndarray) -> MultimodalData:
        present = torch.as_tensor(np.asarray(present_NM), dtype=torch.bool)
        return MultimodalData(self.schema, self.values, self.cell_missing, present, self.labels_N, self.rows_N,
                              self.sources, self.workers)  # fmt: skip


@dataclass
class _Failed:
    """A DataError raised in a loader worker, carried back as its message (the loader would wrap it in a
    traceback)."""

    message: str


class _Batches(torch.utils.data.Dataset):
    """Batch ``i`` of ``data`` in ``order``: what a data loader with ``batch_size=None`` asks its workers for."""

    def __init__(self, data: MultimodalData, order: Tensor, batch_size: int) -> None:
        self.data, self.order, self.batch_size = data, order, batch_size

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __getitem__(self, i: int) -> Batch | _Failed:
        try:
            return self.data.batch(self.order[i * self.batch_size : (i + 1) * self.batch_size])
        except DataError as e:
            return _Failed(str(e))


@dataclass
class Splits:
    train: MultimodalData
    val: MultimodalData
    test: MultimodalData
    natural_NM: np.ndarray  # the table's own presence for every row (before any protocol)
    split_rows: dict[str, np.ndarray]  # split -> row positions in the table
    info: dict  # counts and notes for the run summary
    preprocessing: dict | None = None  # the fitted preprocessing as JSON (data/prepare.py), None when not known

    @property
    def schema(self) -> DataSchema:
        return self.train.schema

    def set_workers(self, workers: int) -> None:
        """Build the batches of every split in ``workers`` data-loader processes (``train.workers``)."""
        for data in (self.train, self.val, self.test):
            data.workers = workers
