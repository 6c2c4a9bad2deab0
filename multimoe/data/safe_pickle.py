"""A restricted unpickler for data that old pandas pickled: numpy arrays, and stand-ins for pandas objects.

Unpickling runs whatever callable the file names, so an ordinary ``pickle.load`` of a file from a package is
arbitrary code execution. ``restricted_load`` admits only the names in ``OLD_PANDAS`` (what a pandas 1.x DataFrame of
numeric columns needs) and refuses every other one with a DataError naming it. The pandas names map to plain
stand-in classes that only keep their pickled state: no pandas code runs (current pandas cannot read old pandas'
internals anyway), and the caller takes the numpy arrays out of the state. The numpy names rebuild arrays without
calling anything else; ``_codecs.encode`` (how a protocol-2 pickle stores bytes) is admitted for latin-1 only.
"""

from __future__ import annotations

import codecs
import pickle
from typing import IO, Any

import numpy as np

from multimoe.errors import DataError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct


class Pickled:
    """A stand-in for a pickled object of a library that is not imported: its class name and pickled state."""

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class DataFrame(Pickled):
    pass


class BlockManager(Pickled):
    pass


class Index(Pickled):
    pass


class RangeIndex(Pickled):
    pass


def _new_index(cls: type, state: dict) -> Pickled:
    """pandas' ``_new_Index(cls, d)``: here, the stand-in ``cls`` holding ``d``."""
    if not (isinstance(cls, type) and issubclass(cls, Pickled)) or not isinstance(state, dict):
        raise DataError(f"refusing pandas._new_Index({cls!r}, ...): not an index of the expected form")
    index = cls()
    index.state = state
    return index


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """``copyreg._reconstructor``, for the stand-ins only: ``object.__new__(cls)``."""
    if not (isinstance(cls, type) and issubclass(cls, Pickled)) or base is not object or state is not None:
        raise DataError(f"refusing copy_reg._reconstructor({cls!r}, {base!r}, ...): only pandas stand-ins are built")
    return object.__new__(cls)


def _latin1(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it: latin-1 text to bytes; every other codec is refused."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591") or not isinstance(text, str):
        raise DataError(f"refusing _codecs.encode with the codec {encoding!r}: only latin-1 byte strings are read")
    return codecs.encode(text, "latin1")


OLD_PANDAS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("_codecs", "encode"): _latin1,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("__builtin__", "slice"): slice,
    ("builtins", "slice"): slice,
    ("pandas.core.frame", "DataFrame"): DataFrame,
    ("pandas.core.internals.managers", "BlockManager"): BlockManager,
    ("pandas.core.indexes.base", "_new_Index"): _new_index,
    ("pandas.core.indexes.base", "Index"): Index,
    ("pandas.core.indexes.range", "RangeIndex"): RangeIndex,
}


class _Restricted(pickle.Unpickler):
    def __init__(self, file: IO[bytes], allowed: dict[tuple[str, str], Any], where: str) -> None:
        super().__init__(file, encoding="latin1")
        self.allowed, self.where = allowed, where

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise DataError(
                f"{self.where}: the pickle names {module}.{name}, which this reader does not admit (it reads only "
                "numpy arrays and pandas frames); the file may have been tampered with"
            )
        return self.allowed[(module, name)]


def restricted_load(file: IO[bytes], where: str, allowed: dict[tuple[str, str], Any] | None = None) -> Any:
    """Unpickle ``file`` admitting only the names in ``allowed`` (default ``OLD_PANDAS``); ``where`` names the file
    in messages."""
    try:
        return _Restricted(file, OLD_PANDAS if allowed is None else allowed, where).load()
    except DataError:
        raise
    except Exception as e:  # a truncated or damaged file: pickle, gzip and numpy raise many error types
        raise DataError(f"{where}: cannot read the pickle ({type(e).__name__}: {e})") from None


def frame_columns(frame: Any, where: str) -> dict[str, np.ndarray]:
    """Column name -> values of a pickled pandas 1.x DataFrame stand-in (its BlockManager's blocks)."""
    try:
        manager = frame.state["_data"]
        current = manager.state[3]["0.14.1"]  # pandas' BlockManager state: (..., {"0.14.1": {"axes", "blocks"}})
        names = [str(c) for c in current["axes"][0].state["data"]]
        out: dict[str, np.ndarray] = {}
        for block in current["blocks"]:
            locs = block["mgr_locs"]
            positions = range(len(names))[locs] if isinstance(locs, slice) else np.asarray(locs).tolist()
            for row, pos in enumerate(positions):
                out[names[pos]] = np.asarray(block["values"][row])
    except (AttributeError, KeyError, IndexError, TypeError) as e:
        raise DataError(f"{where}: a pickled DataFrame of an unexpected layout ({type(e).__name__}: {e})") from None
    return out
