"""In-memory multimodal data: preprocessed tensors, presence and labels, cut into batches by index.

Shape letters: the legend in ``multimoe/__init__.py`` (N rows, M modalities, F features of a modality).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from multimoe.batch import Batch, combination_index


@dataclass(frozen=True)
class DataSchema:
    """What a model needs to know about the data: modality names, their encoded widths, the classes."""

    modalities: tuple[str, ...]
    features: tuple[int, ...]  # encoded width per modality
    classes: tuple[str, ...]

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        return {"modalities": list(self.modalities), "features": list(self.features), "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, d: dict) -> DataSchema:
        return cls(tuple(d["modalities"]), tuple(int(f) for f in d["features"]), tuple(d["classes"]))


@dataclass
class MultimodalData:
    """One split. ``values`` are preprocessed and hold 0 in missing cells; a modality's values are zeroed in
    batches where it is absent, so changing ``present_NM`` (another protocol) needs no re-preprocessing."""

    schema: DataSchema
    values: dict[str, Tensor]  # modality -> N x F float32
    cell_missing: dict[str, Tensor]  # modality -> N x F bool
    present_NM: Tensor  # bool
    labels_N: Tensor  # long
    rows_N: np.ndarray  # row positions in the source table (for messages)
    combo_N: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.combo_N = combination_index(self.present_NM)

    def __len__(self) -> int:
        return int(self.labels_N.shape[0])

    def batch(self, idx: Tensor | np.ndarray | slice) -> Batch:
        if isinstance(idx, np.ndarray):
            idx = torch.from_numpy(idx)
        present = self.present_NM[idx]
        inputs, missing = {}, {}
        for m, name in enumerate(self.schema.modalities):
            keep = present[:, m : m + 1]
            inputs[name] = self.values[name][idx] * keep
            missing[name] = self.cell_missing[name][idx] & keep
        return Batch(inputs, missing, present, self.labels_N[idx], self.combo_N[idx])

    def batches(self, batch_size: int, order: Tensor | None = None):
        n = len(self)
        order = torch.arange(n) if order is None else order
        for start in range(0, n, batch_size):
            yield self.batch(order[start : start + batch_size])

    def subset(self, idx: np.ndarray) -> MultimodalData:
        t = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        return MultimodalData(
            self.schema,
            {k: v[t] for k, v in self.values.items()},
            {k: v[t] for k, v in self.cell_missing.items()},
            self.present_NM[t],
            self.labels_N[t],
            self.rows_N[np.asarray(idx)],
        )

    def with_presence(self, present_NM: Tensor | np.ndarray) -> MultimodalData:
        present = torch.as_tensor(np.asarray(present_NM), dtype=torch.bool)
        return MultimodalData(self.schema, self.values, self.cell_missing, present, self.labels_N, self.rows_N)


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
