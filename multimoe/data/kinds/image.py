"""Image modalities: a column of file paths read lazily, batch by batch (never all at once), or an in-memory array.

Spec entry::

    scan: {kind: image, column: scan_path}                  # PNG / JPEG (Pillow) or .npy, relative to the spec file
    scan: {kind: image, column: scan_path, root: images/, size: [64, 64], channels: 1, missing_file: absent}
    mri:  {kind: image, column: mri_path, dims: 3, size: [32, 32, 32]}   # .npy volumes (Z, Y, X) or (V, Z, Y, X)

An empty path is a missing modality. A path to no file is an error naming the row and the path, unless
``missing_file: absent`` counts it as a missing modality. ``size`` (Y, X) or (Z, Y, X) and ``channels`` (1 or 3)
default to those of the first present image; other images are resized (bilinear / trilinear; NaN pixels of a
``.npy`` are unobserved and stay so). Pixel values are scaled to [0, 1] for 8-bit files, then standardised per
channel with statistics fit on at most ``FIT_IMAGES`` training images. Batch: ``x_BVYX`` (or ``x_BVZYX``) float32 and
``missing_BYX`` (``missing_BZYX``): True at unobserved pixels and everywhere in an absent row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from multimoe.data.kinds.base import (
    KindShape,
    ModalitySource,
    check_entry,
    choice,
    frame_column,
    is_empty,
    positive_int,
    resolve_path,
)
from multimoe.errors import DataError

FIT_IMAGES = 256  # normalisation statistics come from at most this many training images (evenly spaced rows)
FILE_KEYS = ("root", "size", "channels", "dims", "missing_file", "normalize")


class ImageSource(ModalitySource):
    kind = "image"
    row_arrays = ("present_N", "paths", "array")

    def __init__(self, name: str, *, paths=None, array=None, size=None, channels: int | None = None, dims: int = 2,
                 missing_file: str = "error", normalize: bool = True, index=None, where: str = "",
                 column: str = "") -> None:  # fmt: skip
        if (paths is None) == (array is None):
            raise ValueError("give paths or an array")
        rows = len(paths) if paths is not None else len(array)
        super().__init__(name, rows, index, where)
        self.dims, self.column, self.normalize = dims, column, normalize
        self.paths, self.array = None, None
        if array is not None:
            self.array = self._channels_first(np.asarray(array, dtype=np.float32))
            self.present_N = ~np.isnan(self.array.reshape(rows, -1)).all(axis=1)
            first = self.array[0]
        else:
            self.paths, self.present_N = self._check_paths(list(paths), missing_file)
            if not self.present_N.any() and (channels is None or size is None):  # nothing to learn them from
                raise DataError(f"{self.label()}: no row has an image")
            first = None
        self.channels = channels
        self.size = tuple(int(s) for s in size) if size is not None else None
        if self.channels is None or self.size is None:
            if first is None:  # the first present image decides what was not given
                first = self._decode(int(np.flatnonzero(self.present_N)[0]))
            self.channels = self.channels or int(first.shape[0])
            self.size = self.size or tuple(int(s) for s in first.shape[1:])
        if len(self.size) != dims:
            raise DataError(f"{self.label()}: 'size' needs {dims} numbers for {dims}D images, got {list(self.size)}")
        self.mean_V = np.zeros(self.channels, dtype=np.float32)  # identity scaling until fit
        self.std_V = np.ones(self.channels, dtype=np.float32)

    @classmethod
    def from_spec(cls, name: str, entry: dict, frame: pd.DataFrame, base_dir: Path | None = None, where: str = ""):
        check_entry(name, cls.kind, entry, ("column",), FILE_KEYS, where)
        column = frame_column(frame, entry["column"], name, cls.kind, where)
        dims = choice(entry.get("dims", 2), "dims", (2, 3), name, cls.kind, where)
        size = entry.get("size")
        if size is not None:
            if not isinstance(size, list) or len(size) != dims:
                raise DataError(f"modality '{name}' (image){where}: 'size' must list {dims} numbers, got {size!r}")
            size = [positive_int(s, "size", name, cls.kind, where) for s in size]
        channels = entry.get("channels")
        if channels is not None:
            channels = choice(channels, "channels", (1, 3), name, cls.kind, where)
        normalize = entry.get("normalize", True)
        if not isinstance(normalize, bool):
            raise DataError(f"modality '{name}' (image){where}: 'normalize' must be true or false, got {normalize!r}")
        root = resolve_path(entry.get("root", "."), base_dir)
        cells = [None if is_empty(c) else str(resolve_path(str(c).strip(), root)) for c in column.tolist()]
        return cls(
            name,
            paths=cells,
            size=size,
            channels=channels,
            dims=dims,
            missing_file=choice(
                entry.get("missing_file", "error"), "missing_file", ("error", "absent"), name, cls.kind, where
            ),  # fmt: skip
            normalize=normalize,
            index=frame.index,
            where=where,
            column=str(entry["column"]),
        )

    def _channels_first(self, array: np.ndarray) -> np.ndarray:
        """N x V x spatial from N x spatial (one channel) or N x V x spatial."""
        if array.ndim == self.dims + 1:
            array = array[:, None]
        if array.ndim != self.dims + 2:
            raise DataError(
                f"{self.label()}: an in-memory array of shape {array.shape} is not (rows, [channels,] "
                f"{'depth, ' if self.dims == 3 else ''}height, width)"
            )
        if np.isinf(array).any():
            raise DataError(f"{self.label()}: the array holds infinite values; use NaN for an unobserved pixel")
        return array

    def _check_paths(self, paths: list, missing_file: str) -> tuple[np.ndarray, np.ndarray]:
        present = np.zeros(len(paths), dtype=bool)
        out = np.empty(len(paths), dtype=object)
        for pos, path in enumerate(paths):
            if path is None:
                continue
            if not Path(path).is_file():
                if missing_file == "absent":
                    continue
                folder = " (it is a folder)" if Path(path).is_dir() else ""
                column = f" of column '{self.column}'" if self.column else ""
                raise DataError(
                    f"{self.label()}: {self.row_name(pos)}{column} names the file {path}, which does not exist"
                    f"{folder}; fix the path, or set missing_file: absent in the modality's spec to count such rows "
                    "as missing the modality"
                )
            out[pos], present[pos] = path, True
        return out, present

    def _decode(self, pos: int) -> np.ndarray:
        """One image as float32 V x spatial (NaN: unobserved), before resizing."""
        path = str(self.paths[pos])
        column = f" of column '{self.column}'" if self.column else ""
        where = f"{self.label()}: {self.row_name(pos)}{column}, file {path}"
        if path.lower().endswith(".npy"):
            try:
                array = np.load(path, allow_pickle=False)
                array = array.astype(np.float32)
            except Exception as e:  # a damaged file, an object array, a non-numeric dtype
                raise DataError(f"{where}: not a numeric .npy array ({type(e).__name__}: {e})") from None
            if array.ndim == self.dims:
                array = array[None]
            if array.ndim != self.dims + 1:
                raise DataError(
                    f"{where}: an array of shape {array.shape}; {self.dims}D images are "
                    f"({'depth, ' if self.dims == 3 else ''}height, width), channels first when there are several"
                )
            if np.isinf(array).any():
                raise DataError(f"{where}: holds infinite values; use NaN for an unobserved pixel")
            return array
        if self.dims == 3:
            raise DataError(f"{where}: 3D images are read from .npy files (depth, height, width)")
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                channels = self.channels or (1 if image.mode in ("1", "L", "LA") else 3)  # grey stays grey
                array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DataError(
                f"{where}: not an image Pillow can decode ({type(e).__name__}: {' '.join(str(e).split())}); "
                "use PNG or JPEG files, or .npy arrays"
            ) from None
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)

    def _image(self, pos: int) -> np.ndarray:
        """One image as float32 V x size, standardised, NaN where unobserved."""
        image = self.array[pos] if self.array is not None else self._decode(pos)
        if image.shape[0] != self.channels:
            raise DataError(
                f"{self.label()}: {self.row_name(pos)} has {image.shape[0]} channels; the modality's images have "
                f"{self.channels} (set 'channels' in the spec, or convert the file)"
            )
        if tuple(image.shape[1:]) != self.size:
            image = _resize(image, self.size)
        return (image - self.mean_V.reshape(-1, *[1] * self.dims)) / self.std_V.reshape(-1, *[1] * self.dims)

    def fit(self, rows: np.ndarray, present_N: np.ndarray | None = None) -> ImageSource:
        if not self.normalize:
            return self
        rows = np.asarray(rows, dtype=np.int64)
        use = rows[self.present_N[rows] & (True if present_N is None else np.asarray(present_N)[rows])]
        if use.size > FIT_IMAGES:
            use = use[np.linspace(0, use.size - 1, FIT_IMAGES).round().astype(np.int64)]
        self.mean_V = np.zeros(self.channels, dtype=np.float32)
        self.std_V = np.ones(self.channels, dtype=np.float32)
        if use.size == 0:
            return self
        total = np.zeros(self.channels)
        squares = np.zeros(self.channels)
        count = np.zeros(self.channels)
        for pos in use:
            image = self._image(int(pos)).reshape(self.channels, -1).astype(np.float64)
            observed = ~np.isnan(image)
            total += np.where(observed, image, 0).sum(axis=1)
            squares += np.where(observed, image**2, 0).sum(axis=1)
            count += observed.sum(axis=1)
        mean = total / np.maximum(count, 1)
        std = np.sqrt(np.maximum(squares / np.maximum(count, 1) - mean**2, 0))
        self.mean_V = mean.astype(np.float32)
        self.std_V = np.where(std > 1e-6, std, 1.0).astype(np.float32)
        return self

    def input_shape(self) -> KindShape:
        return KindShape(self.kind, (self.channels, *self.size))

    def fitted(self) -> dict:
        return {"channels": self.channels, "size": list(self.size), "mean": self.mean_V.tolist(),
                "std": self.std_V.tolist()}  # fmt: skip

    def load_fitted(self, state: dict) -> ImageSource:
        self.mean_V = np.asarray(state["mean"], dtype=np.float32)
        self.std_V = np.asarray(state["std"], dtype=np.float32)
        return self

    @classmethod
    def entry_for_new_rows(cls, entry: dict, state: dict) -> dict:
        """The training size and channels: new images are resized and converted as the training ones were."""
        return {**entry, "size": list(state["size"]), "channels": int(state["channels"])}

    def describe(self) -> str:
        source = "files" if self.paths is not None else "in memory"
        return f"image, {self.channels} channel(s) of {' x '.join(map(str, self.size))} ({source})"

    def batch(self, rows: np.ndarray, keep: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        rows, read = self._rows_and_keep(rows, keep)
        x = np.zeros((len(rows), self.channels, *self.size), dtype=np.float32)
        missing = np.ones((len(rows), *self.size), dtype=bool)
        for i in np.flatnonzero(read):
            image = self._image(int(rows[i]))
            unobserved = np.isnan(image).any(axis=0)
            x[i] = np.where(unobserved, 0.0, image)
            missing[i] = unobserved
        return torch.from_numpy(x), torch.from_numpy(missing)


def _resize(image: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """V x spatial resized to ``size``; unobserved (NaN) pixels are left out of the interpolation (a pixel is
    observed when at least half its interpolation weight was)."""
    observed = ~np.isnan(image)
    stacked = torch.from_numpy(np.concatenate([np.where(observed, image, 0.0), observed]).astype(np.float32))[None]
    if len(size) == 2:
        out = F.interpolate(stacked, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    else:
        out = F.interpolate(stacked, size=size, mode="trilinear", align_corners=False)[0]
    values, weight = out[: image.shape[0]], out[image.shape[0] :]
    return torch.where(weight > 0.5, values / weight.clamp_min(1e-6), torch.nan).numpy()
