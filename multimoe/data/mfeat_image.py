"""UCI Multiple Features with its ``pix`` view as what it is: a 16 x 15 image (rows top to bottom), beside the other
five feature views as table columns (``mfeat``).

The 240 pixel averages (0-6: each the count of ink pixels in a 2 x 3 window of the original 30 x 48 binary digit)
are stored row by row, 15 values a row, the top row first; ``tests/test_data_kinds_datasets.py`` writes a few digits as
PNG files to check the orientation by eye and checks it in code (ink in the top rows of a 7, the bottom row of a 2).
Modalities in mfeat's order (the same combinations as mfeat's): fou, fac, kar (columns), pix (image, 1 x 16 x 15),
zer, mor (columns).
"""

from __future__ import annotations

import dataclasses

from multimoe.config import DataConfig
from multimoe.data import mfeat
from multimoe.data.builtin import BuiltinDataset
from multimoe.data.kinds.image import ImageSource
from multimoe.data.table import Table

HEIGHT, WIDTH = 16, 15


def load(cfg: DataConfig) -> Table:
    table = mfeat.load(cfg)
    pix = table.modalities.pop("pix")
    image = table.frame[pix].to_numpy(dtype="float32").reshape(-1, 1, HEIGHT, WIDTH)
    return dataclasses.replace(
        table,
        name="mfeat-image",
        frame=table.frame.drop(columns=pix),
        sources={"pix": ImageSource("pix", array=image, index=table.frame.index)},
    )


DATASET = BuiltinDataset(load, mfeat.PACKAGE, mfeat.VERSION, mfeat.DATASET.license)
