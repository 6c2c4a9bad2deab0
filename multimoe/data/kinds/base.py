"""What every modality kind shares: the shape an encoder reads, the source interface, spec-entry checks.

A source holds one modality of a table for every row (in the table's row order) and answers four questions:
which rows have the modality (``presence``), what to learn from the training rows (``fit``), what an encoder will
read (``input_shape``), and the batch tensors of some rows (``batch``). It keeps arrays and file paths only (no open
file, no frame), so it pickles into data-loader worker processes.

Batch tensors: ``x`` (a tensor, or a named tuple of tensors, each with the batch first) and ``missing`` (bool, True
where a position holds no observation). A row whose modality is absent, or hidden by ``keep``, is all zeros with
``missing`` all True and is never read from disk; the model replaces its encoding with the missing-modality fill.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from multimoe.errors import DataError


@dataclass(frozen=True)
class KindShape:
    """What an encoder needs to know about a modality: its kind and the per-sample shape of ``x``.

    table / embedding: (F,); series: (V, U); image: (V, Y, X) or (V, Z, Y, X); text: (W,) token ids below ``vocab``.
    """

    kind: str
    shape: tuple[int, ...]
    vocab: int = 0  # text: ids are in [0, vocab), 0 = padding

    def to_dict(self) -> dict:
        return {"kind": self.kind, "shape": list(self.shape), "vocab": self.vocab}

    @classmethod
    def from_dict(cls, d: dict) -> KindShape:
        return cls(str(d["kind"]), tuple(int(s) for s in d["shape"]), int(d.get("vocab", 0)))


class ModalitySource:
    """One non-tabular modality of a table, row-aligned with it (see the module docstring)."""

    kind: ClassVar[str] = ""
    row_arrays: ClassVar[tuple[str, ...]] = ("present_N",)  # attributes with one entry per row (``subset`` slices)
    present_N: np.ndarray  # natural presence, set by each kind's constructor

    def __init__(self, name: str, rows: int, index: Any = None, where: str = "") -> None:
        self.name = str(name)
        self.index = np.arange(rows) if index is None else np.asarray(index)  # row labels, for messages
        self.where = where  # " in <file>", for messages
        self.entry: dict | None = None  # the spec entry it was built from (build_source); None when built in Python
        if len(self.index) != rows:
            raise ValueError(f"{len(self.index)} row labels for {rows} rows")

    def __len__(self) -> int:
        return len(self.index)

    def row_name(self, pos: int) -> str:
        """A row as the user finds it: its table index label (rows of a file count from 0 after the header)."""
        return f"row {self.index[pos]}"

    def label(self) -> str:
        return f"modality '{self.name}' ({self.kind}){self.where}"

    def presence(self) -> np.ndarray:
        """N bool: whether each row has this modality (its natural presence)."""
        return self.present_N.copy()

    def fit(self, rows: np.ndarray, present_N: np.ndarray | None = None) -> ModalitySource:
        """Learn what needs learning from the training rows ``rows`` (positions), where ``present_N`` (all rows,
        after the training protocol) says the modality is present. Returns self."""
        return self

    def input_shape(self) -> KindShape:
        raise NotImplementedError

    def batch(self, rows: np.ndarray, keep: np.ndarray | None = None) -> tuple[Any, Any]:
        """``(x, missing)`` of ``rows``; rows with ``keep`` False (a protocol hid the modality) are not read."""
        raise NotImplementedError

    def state(self) -> dict:
        """JSON for the run's preprocess.json: the kind, the spec entry (None when built in Python), the input shape,
        and what ``fit`` learned (``fitted``), from which ``multimoe predict`` reads new rows as the training rows."""
        return {"kind": self.kind, "entry": self.entry, "shape": self.input_shape().to_dict(), **self.fitted()}

    def fitted(self) -> dict:
        """What ``fit`` learned, and what fixes the input shape, as JSON (``load_fitted`` reads it back)."""
        return {}

    def load_fitted(self, state: dict) -> ModalitySource:
        """Take over a fitted state (``fitted``, from training) instead of fitting. Returns self."""
        return self

    @classmethod
    def entry_for_new_rows(cls, entry: dict, state: dict) -> dict:
        """A spec entry for new rows with what must match training taken from its state (sizes, channels, steps)."""
        return dict(entry)

    def describe(self) -> str:
        """One line for ``multimoe datasets``: kind and shape."""
        return f"{self.kind} {'x'.join(map(str, self.input_shape().shape))}"

    def subset(self, rows: np.ndarray) -> ModalitySource:
        """The same source restricted to ``rows`` (positions), in that order (e.g. after dropping unlabelled rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = copy.copy(self)
        out.index = self.index[rows]
        for attr in self.row_arrays:
            value = getattr(self, attr)
            if value is not None:
                setattr(out, attr, value[rows])
        return out

    def _rows_and_keep(self, rows: np.ndarray, keep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Row positions as int64 and which of them to read: present naturally and kept by the protocol."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        read = self.present_N[rows]
        if keep is not None:
            read = read & np.asarray(keep, dtype=bool).reshape(-1)
        return rows, read


def check_entry(name: str, kind: str, entry: dict, required: tuple[str, ...], optional: tuple[str, ...],
                where: str = "") -> None:  # fmt: skip
    """Unknown or absent keys of a spec entry: a DataError naming the modality and the valid keys."""
    valid = ("kind", *required, *optional)
    for key in entry:
        if key not in valid:
            raise DataError(f"modality '{name}' ({kind}){where}: unknown key '{key}'; valid keys: {', '.join(valid)}")
    for key in required:
        if key not in entry:
            raise DataError(f"modality '{name}' ({kind}){where} needs the key '{key}' (keys: {', '.join(valid)})")


def frame_column(frame: pd.DataFrame, column: Any, name: str, kind: str, where: str = "") -> pd.Series:
    """A column of the table that a kind reads (paths, text, ids): a DataError when it is absent."""
    column = str(column)
    if column not in frame.columns:
        shown = ", ".join(map(str, frame.columns[:20])) + (", ..." if len(frame.columns) > 20 else "")
        raise DataError(
            f"modality '{name}' ({kind}) reads column '{column}', which is not in the table{where}; columns are: "
            f"{shown}"
        )
    return frame[column]


def resolve_path(value: str, base_dir: Path | None) -> Path:
    """A path from a spec: absolute as given, else relative to the spec file's folder (or the working folder)."""
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() or base_dir is None else base_dir / path


def is_empty(cell: Any) -> bool:
    """An empty cell: None, NaN, or text that is blank."""
    if cell is None:
        return True
    if isinstance(cell, float) and np.isnan(cell):
        return True
    if isinstance(cell, (str, bytes)):
        return not cell.strip()
    return bool(pd.isna(cell)) if np.ndim(cell) == 0 else False


def positive_int(value: Any, key: str, name: str, kind: str, where: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"modality '{name}' ({kind}){where}: '{key}' must be a positive whole number, got {value!r}")
    return int(value)


def choice(value: Any, key: str, choices: tuple, name: str, kind: str, where: str = "") -> Any:
    if value not in choices:
        raise DataError(
            f"modality '{name}' ({kind}){where}: '{key}' must be one of {', '.join(map(str, choices))}; got {value!r}"
        )
    return value


ARRAY_SUFFIXES = (".npy", ".safetensors", ".pt", ".pth")


def read_array(path: Path, key: Any, what: str) -> np.ndarray:
    """An array from a ``.npy``, ``.safetensors`` or ``.pt`` (weights only: tensors, never code) file; ``key``
    names the tensor in a file that holds several. ``what`` names the modality in messages."""
    suffix = path.suffix.lower()
    if suffix not in ARRAY_SUFFIXES:
        raise DataError(f"{what}: file {path} has the unknown format '{suffix}'; use {', '.join(ARRAY_SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{what}: file {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        import torch

        if suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # numpy, safetensors and torch raise many error types for a damaged or foreign file
        reason = " ".join(str(e).split())[:300]
        raise DataError(
            f"{what}: cannot read {path} as {suffix} ({type(e).__name__}: {reason}); expected a numeric array "
            f"(.pt files load with weights_only=True: tensors only, no pickled objects)"
        ) from None
    if isinstance(loaded, dict):
        tensors = {str(k): v for k, v in loaded.items() if hasattr(v, "numpy")}
        if key is not None:
            if str(key) not in tensors:
                raise DataError(f"{what}: {path} has no tensor '{key}'; it holds: {', '.join(tensors) or 'none'}")
            loaded = tensors[str(key)]
        elif len(tensors) == 1:
            loaded = next(iter(tensors.values()))
        else:
            raise DataError(
                f"{what}: {path} holds {len(tensors)} tensors ({', '.join(list(tensors)[:10])}); name one with 'key'"
            )
    if not hasattr(loaded, "numpy"):
        raise DataError(f"{what}: {path} holds a {type(loaded).__name__}, not a tensor")
    return loaded.detach().float().numpy() if hasattr(loaded, "detach") else np.asarray(loaded)


def finite_or_nan(values: np.ndarray, what: str, row_name) -> np.ndarray:
    """float32 values; NaN marks an unobserved cell, an infinite value is an error naming its row."""
    try:
        values = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(f"{what}: values are not numeric ({e})") from None
    inf = np.isinf(values)
    if inf.any():
        pos = int(np.argwhere(inf)[0][0])
        raise DataError(
            f"{what}: {row_name(pos)} holds an infinite value ({int(inf.sum())} in all); use NaN for an unobserved "
            "value"
        )
    return values


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions start..start+length-1 of every (start, length), one after another."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    offsets = np.repeat(starts - (ends - lengths), lengths)
    return np.arange(total, dtype=np.int64) + offsets
