"""Text modalities: a text column hashed into n-gram ids (the hashing trick: no vocabulary, nothing to download or
fit; Weinberger et al. 2009, fastText's bag of n-grams, Joulin et al. 2017).

Spec entry::

    notes: {kind: text, column: note}                      # defaults below
    notes: {kind: text, column: note, buckets: 32768, ngrams: 2, max_tokens: 256, lowercase: true}

Each text is split into words (``\\w+``, lower-cased by default); every word n-gram up to ``ngrams`` words is hashed
(CRC-32 of the UTF-8 n-gram, stable across processes and machines) into ``buckets`` ids 1..buckets (0 is padding).
A text keeps its first ``max_tokens`` ids. An empty or blank cell is a missing modality. Bytes are decoded as UTF-8;
a cell that is not valid UTF-8 is an error naming its row. Batch: ids ``x_BW`` (int64, 0-padded) and ``missing_BW``
(True at padding). The ids of all rows are computed once, when the source is made.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from multimoe.data.kinds.base import (
    KindShape,
    ModalitySource,
    check_entry,
    frame_column,
    is_empty,
    positive_int,
    ranges,
)
from multimoe.errors import DataError

WORD = re.compile(r"\w+")


def hash_ngrams(text: str, buckets: int, ngrams: int, max_tokens: int, lowercase: bool = True) -> np.ndarray:
    """Ids in 1..buckets of the text's word n-grams (n = 1..ngrams), in reading order, at most ``max_tokens``."""
    words = WORD.findall(text.lower() if lowercase else text)
    ids = []
    for i in range(len(words)):
        for n in range(1, ngrams + 1):
            if i + n > len(words):
                break
            gram = f"{n}\x1f" + "\x1f".join(words[i : i + n])  # the order prefix keeps "a b" and "a_b" apart
            ids.append(zlib.crc32(gram.encode("utf-8")) % buckets + 1)
            if len(ids) == max_tokens:
                return np.asarray(ids, dtype=np.int32)
    return np.asarray(ids, dtype=np.int32)


class TextSource(ModalitySource):
    kind = "text"
    row_arrays = ("present_N", "lengths_N")

    def __init__(self, name: str, texts, buckets: int = 32768, ngrams: int = 2, max_tokens: int = 256,
                 lowercase: bool = True, index=None, where: str = "", column: str = "") -> None:  # fmt: skip
        texts = list(texts)
        super().__init__(name, len(texts), index, where)
        self.buckets, self.ngrams, self.max_tokens, self.lowercase = buckets, ngrams, max_tokens, lowercase
        self.column = column
        chunks, lengths = [], np.zeros(len(texts), dtype=np.int64)
        for pos, cell in enumerate(texts):
            text = self._text(pos, cell)
            ids = hash_ngrams(text, buckets, ngrams, max_tokens, lowercase) if text else np.zeros(0, np.int32)
            chunks.append(ids)
            lengths[pos] = ids.size
        self.ids = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)  # every row's ids, one after another
        self.lengths_N = lengths
        # a text with no word (only punctuation) is present but empty: it still reads as "this row has a text"
        self.present_N = np.array([not is_empty(c) for c in texts], dtype=bool)
        self.width = max(1, int(lengths.max(initial=0)))  # W: the longest text's ids, at most max_tokens

    def _text(self, pos: int, cell) -> str:
        if isinstance(cell, (bytes, bytearray)):
            try:
                return bytes(cell).decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(self._not_utf8(pos, e)) from None
        if is_empty(cell):
            return ""
        text = str(cell)
        try:
            text.encode("utf-8")  # lone surrogates: bytes that were not UTF-8, smuggled through errors=surrogateescape
        except UnicodeEncodeError as e:
            raise DataError(self._not_utf8(pos, e)) from None
        return text

    def _not_utf8(self, pos: int, e: UnicodeError) -> str:
        column = f" of column '{self.column}'" if self.column else ""
        return (
            f"{self.label()}: {self.row_name(pos)}{column} is not UTF-8 text ({e.reason} at position {e.start}); "
            "save the text as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        )

    @classmethod
    def from_spec(cls, name: str, entry: dict, frame: pd.DataFrame, base_dir: Path | None = None, where: str = ""):
        check_entry(name, cls.kind, entry, ("column",), ("buckets", "ngrams", "max_tokens", "lowercase"), where)
        column = frame_column(frame, entry["column"], name, cls.kind, where)
        lowercase = entry.get("lowercase", True)
        if not isinstance(lowercase, bool):
            raise DataError(f"modality '{name}' (text){where}: 'lowercase' must be true or false, got {lowercase!r}")
        return cls(
            name,
            column.tolist(),
            buckets=positive_int(entry.get("buckets", 32768), "buckets", name, cls.kind, where),
            ngrams=positive_int(entry.get("ngrams", 2), "ngrams", name, cls.kind, where),
            max_tokens=positive_int(entry.get("max_tokens", 256), "max_tokens", name, cls.kind, where),
            lowercase=lowercase,
            index=frame.index,
            where=where,
            column=str(entry["column"]),
        )

    def subset(self, rows: np.ndarray) -> TextSource:
        rows = np.asarray(rows, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(self.lengths_N)[:-1]]).astype(np.int64)
        out = super().subset(rows)
        out.ids = self.ids[ranges(starts[rows], self.lengths_N[rows])]
        return out

    def input_shape(self) -> KindShape:
        return KindShape(self.kind, (self.width,), vocab=self.buckets + 1)

    def fitted(self) -> dict:
        return {"width": self.width}

    def load_fitted(self, state: dict) -> TextSource:
        """The training width W: a longer text of new rows keeps its first W ids."""
        self.width = int(state["width"])
        return self

    def describe(self) -> str:
        return f"text, {self.ngrams}-gram ids hashed into {self.buckets} buckets, up to {self.width} per row"

    def batch(self, rows: np.ndarray, keep: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        rows, read = self._rows_and_keep(rows, keep)
        starts = np.concatenate([[0], np.cumsum(self.lengths_N)[:-1]]).astype(np.int64)
        lengths = np.where(read, np.minimum(self.lengths_N[rows], self.width), 0)
        ids_BW = np.zeros((len(rows), self.width), dtype=np.int64)
        filled_BW = np.arange(self.width)[None, :] < lengths[:, None]
        ids_BW[filled_BW] = self.ids[ranges(starts[rows], lengths)]
        return torch.from_numpy(ids_BW), torch.from_numpy(~filled_BW)
