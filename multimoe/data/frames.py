"""Reading table files (CSV, TSV, Parquet) with one clear error per problem; shared by the user's table
(``table.py``), the long tables of series modalities (``kinds/series.py``) and ``multimoe predict``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from multimoe.errors import DataError

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")


def read_frame(path: Path, what: str = "table file") -> pd.DataFrame:
    """Read a CSV or Parquet file with a clear error when it is absent or unreadable; ``what`` names the file in
    messages (e.g. "modality 'vitals' (series): the series table")."""
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise DataError(f"{what} {path} is empty (0 bytes); expected a header line and data rows")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".csv", ".txt", ".tsv"):
            sep = "\t" if suffix == ".tsv" else ","
            frame = pd.read_csv(path, sep=sep)
            check_unique_header(path, pd.read_csv(path, sep=sep, nrows=1, header=None, dtype=str).iloc[0])
        else:
            raise DataError(f"{what} {path}: unknown format '{suffix}'; use .csv, .tsv or .parquet")
    except DataError:
        raise
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {path} is not UTF-8 text: {_where_bytes(path, e)}; save it as UTF-8 (e.g. iconv -f "
                        "latin1 -t utf-8)") from None  # fmt: skip
    except ImportError as e:
        raise DataError(f"cannot read {path}: {e}; install pyarrow for Parquet files (pip install pyarrow)") from None
    except Exception as e:  # pandas and pyarrow raise many parser error types
        hint = "a Parquet file" if suffix in (".parquet", ".pq") else "UTF-8 text, one header line, comma-separated"
        reason = " ".join(str(e).split())
        raise DataError(
            f"cannot parse {what} {path}: {type(e).__name__}: {reason} (expected {hint}"
            f"{'; .tsv for tab-separated' if suffix == '.csv' else ''})"
        ) from None
    if frame.shape[0] == 0:
        raise DataError(f"{what} {path} has a header but no data rows")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def check_unique_header(path: Path, header: pd.Series) -> None:
    """pandas renames a repeated CSV column name ('a', 'a.1') silently; a repeated name is almost always a mistake."""
    names = header.dropna().astype(str)
    dup = names[names.duplicated()]
    if len(dup):
        raise DataError(
            f"table file {path}: column name '{dup.iloc[0]}' appears {int((names == dup.iloc[0]).sum())} times in the "
            "header; give every column a unique name"
        )


def _where_bytes(path: Path, error: UnicodeDecodeError) -> str:
    """Where the first byte that is not UTF-8 is: its row (from 0 after the header) and byte."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return f"{error.reason}"
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start)  # 0: the header
        where = "the header" if line == 0 else f"row {line - 1}"
        return f"{where} holds the byte 0x{data[e.start]:02x} ({e.reason}) at byte {e.start}"
