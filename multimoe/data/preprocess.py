"""The preprocessing fit on the training split, as an object and as JSON: per modality, numeric columns scaled
(standard or quantile) and categorical columns one-hot encoded with the training categories; missing cells become 0
with a missing-cell mask.

``Preprocessor`` is fit on a table's training rows (``data/prepare.py``) and encodes that table's rows; its JSON form
(``to_dict``; the run folder's ``preprocess.json``) rebuilds it without the table (``from_dict``), and
``transform_frame`` encodes any DataFrame with the training columns exactly as the training rows were encoded. This
module imports no torch: a server that feeds an exported (ONNX) model uses it as it is.

The JSON form, for a server that reimplements it: ``modalities`` maps each modality, in the model's order, to its
``columns`` (in order; ``kind`` numeric or categorical, with the training ``categories``) and its ``scaling`` of the
numeric columns (in order): ``standard``: (x - mean) / scale; ``quantile``: the quantile transform of
scikit-learn's ``QuantileTransformer`` with the given ``references`` and per-column ``quantiles``. A categorical
column becomes one 0/1 feature per category, in order (an unseen category: all zeros). Features follow the columns'
order. An empty cell is 0 with its missing-cell mask set (all of a categorical column's features); a modality with
every cell empty is absent (presence mask False). ``label``, ``label_kind`` and ``classes`` (the model's output
order) complete it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.preprocessing import QuantileTransformer, StandardScaler

from multimoe.data.table import Table
from multimoe.errors import DataError

PREPROCESS_FORMAT = 1  # version of the preprocessing's JSON form (Preprocessor.to_dict plus label and classes)
PREPROCESS_FORMAT_SOURCES = 2  # the same plus ``order`` and ``sources`` (data/prepare.py): older versions refuse it


def _numeric(series: pd.Series, column: str, where: str, row_name: Callable[[int], str]) -> np.ndarray | None:
    """Float values of a column (NaN for empty cells), None when the column is text (treated as categorical).
    Messages name the column, the source (``where``) and the row (``row_name(position)``)."""
    if pd.api.types.is_bool_dtype(series):
        series = series.astype("float64")
    if pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype="float64", na_value=np.nan)
    else:
        parsed = pd.to_numeric(series, errors="coerce")
        bad = parsed.isna() & series.notna()
        if bad.all() or not parsed.notna().any():
            return None
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"column '{column}'{where} is numeric but {row_name(pos)} holds the text "
                f"{series.iloc[pos]!r} "
                f"({int(bad.sum())} such cells); fix those cells, or list '{column}' under categorical"
            )
        values = parsed.to_numpy(dtype="float64", na_value=np.nan)
    inf = np.isinf(values)
    if inf.any():
        pos = int(np.flatnonzero(inf)[0])
        raise DataError(
            f"column '{column}'{where} holds an infinite value at {row_name(pos)} "
            f"({int(inf.sum())} in all); replace infinities with a finite value or leave the cell empty"
        )
    return values


@dataclass
class ColumnCoder:
    """How one source column becomes encoded features."""

    column: str
    kind: str  # numeric | categorical
    categories: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [self.column] if self.kind == "numeric" else [f"{self.column}={c}" for c in self.categories]

    def to_dict(self) -> dict:
        return {
            "column": self.column,
            "kind": self.kind,
            **({"categories": self.categories} if self.kind != "numeric" else {}),
        }


def scaler_to_dict(scaler: StandardScaler | QuantileTransformer) -> dict:
    """A fitted scaler's statistics as JSON (floats written with ``repr`` digits: they read back exactly)."""
    if isinstance(scaler, QuantileTransformer):
        return {
            "kind": "quantile",
            "output_distribution": scaler.output_distribution,
            "references": scaler.references_.tolist(),
            "quantiles": scaler.quantiles_.T.tolist(),  # per column: its quantiles at ``references``
        }
    return {"kind": "standard", "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist()}


def scaler_from_dict(d: dict) -> StandardScaler | QuantileTransformer:
    """The scikit-learn scaler of ``scaler_to_dict``, rebuilt from its documented fitted attributes, so that its
    ``transform`` is the very code that encoded the training rows (bit-identical outputs)."""
    if d["kind"] == "quantile":
        references = np.asarray(d["references"], dtype=np.float64)
        scaler = QuantileTransformer(n_quantiles=len(references), output_distribution=d["output_distribution"])
        scaler.references_ = references
        scaler.quantiles_ = np.asarray(d["quantiles"], dtype=np.float64).T
        scaler.n_quantiles_ = len(references)
    else:
        scaler = StandardScaler()
        scaler.mean_ = np.asarray(d["mean"], dtype=np.float64)
        scaler.scale_ = np.asarray(d["scale"], dtype=np.float64)
        scaler.var_ = scaler.scale_**2
    scaler.n_features_in_ = len(d["mean"] if d["kind"] == "standard" else d["quantiles"])
    return scaler


@dataclass
class Encoded:
    """Rows encoded by a fitted preprocessor: what ``MultimodalData`` holds, plus the unseen categories."""

    values: dict[str, np.ndarray]  # modality -> N x F float32, 0 in missing cells
    missing: dict[str, np.ndarray]  # modality -> N x F bool: missing cells
    present_NM: np.ndarray  # a modality is present unless every one of its cells is empty (absent columns: empty)
    unknown: dict[str, np.ndarray]  # categorical column -> N bool: a category training never saw (encoded as zeros)


class Preprocessor:
    """Per-modality encoding fit on the training split: scaled numeric columns, one-hot categorical columns.

    Fit on a table (``fit``, then ``transform`` of table rows), or rebuilt from its JSON form (``from_dict``);
    either encodes new rows of any DataFrame with the training columns (``transform_frame``)."""

    def __init__(self, table: Table | None, scaler: str = "standard") -> None:
        self.table = table  # None when rebuilt from JSON
        self.scaler_kind = scaler
        self.categorical = list(table.categorical) if table is not None else []  # declared categorical columns
        self.coders: dict[str, list[ColumnCoder]] = {}
        self.scalers: dict[str, object] = {}
        self.numeric: dict[str, np.ndarray] = {}  # column -> float values for all rows (parsed once)
        self.auto_categorical: list[str] = []
        self.unknown_rows: dict[str, np.ndarray] = {}  # categorical column -> rows with a category unseen in fit

    def _column_values(self, column: str) -> np.ndarray | None:
        if column in self.table.categorical:
            return None
        if column not in self.numeric:
            values = _numeric(self.table.frame[column], column, self.table.where, self.table.row_name)
            if values is None:
                self.auto_categorical.append(column)
                return None
            self.numeric[column] = values
        return self.numeric[column]

    def fit(self, rows: np.ndarray, present_NM: np.ndarray) -> Preprocessor:
        """Fit on ``rows`` (training row positions), using a modality only where it is present."""
        frame = self.table.frame
        for m, (mod, columns) in enumerate(self.table.modalities.items()):
            fit_rows = rows[present_NM[rows, m]]
            if fit_rows.size == 0:
                raise DataError(
                    f"modality '{mod}'{self.table.where} is never present in the training split (present in "
                    f"{int(present_NM[:, m].sum())} of {len(present_NM)} rows in all): nothing to learn it from; "
                    "drop the modality or give more rows observed values"
                )
            coders, numeric_cols = [], []
            for c in columns:
                values = self._column_values(c)
                if values is None:
                    observed = frame[c].iloc[fit_rows].dropna().astype(str)
                    coders.append(ColumnCoder(c, "categorical", sorted(observed.unique().tolist())))
                else:
                    coders.append(ColumnCoder(c, "numeric"))
                    numeric_cols.append(values[fit_rows])
            self.coders[mod] = coders
            if numeric_cols:
                fit_X = np.stack(numeric_cols, axis=1)
                self.scalers[mod] = self._fit_scaler(fit_X)
                self._check_scaled(mod, fit_X, fit_rows, [c.column for c in coders if c.kind == "numeric"])
        return self

    def _fit_scaler(self, X: np.ndarray):
        X = X.copy()
        empty = np.isnan(X).all(axis=0)
        X[:, empty] = 0.0  # a column never observed in training encodes as 0 (its missing mask carries the rest)
        if self.scaler_kind == "quantile":
            n_obs = max(10, int((~np.isnan(X)).sum(axis=0).min()))
            scaler = QuantileTransformer(
                n_quantiles=min(1000, n_obs), output_distribution="normal", subsample=100_000, random_state=0
            )
        else:
            scaler = StandardScaler()
        with np.errstate(all="ignore"):  # overflowing statistics are reported by _check_scaled
            return scaler.fit(X)

    def _check_scaled(self, mod: str, X: np.ndarray, rows: np.ndarray, columns: list[str]) -> None:
        """Values so large that their statistics overflow (e.g. 1e300) would reach the model as inf or NaN."""
        with np.errstate(all="ignore"):
            scaled = self.scalers[mod].transform(np.where(np.isnan(X), 0.0, X)).astype(np.float32)
        bad = ~np.isfinite(scaled)
        if bad.any():
            r, j = (int(a[0]) for a in np.nonzero(bad))
            raise DataError(
                f"column '{columns[j]}'{self.table.where} holds values too large to scale (e.g. {X[r, j]:g} at "
                f"{self.table.row_name(int(rows[r]))}); rescale the column (other units, a logarithm) or clip it"
            )

    def transform(self, rows: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Encoded values (0 in missing cells) and missing-cell masks of ``rows``, per modality."""
        frame = self.table.frame
        values, missing, self.unknown_rows = self._encode(
            len(rows),
            lambda c: self.numeric[c][rows],
            lambda c: frame[c].iloc[rows],
            self.table.where,
            lambda j: self.table.row_name(int(rows[j])),
        )
        return values, missing

    def transform_frame(
        self, frame: pd.DataFrame, where: str = "", present_elsewhere: np.ndarray | None = None
    ) -> Encoded:
        """Encode the rows of ``frame`` (new data with the training columns; the label is not needed) as the
        training rows were: the same scaling and categories; a modality is present in a row unless all its cells
        are empty, and one whose columns are absent from ``frame`` is missing in every row; a column absent from
        ``frame`` whose modality has other columns counts as empty cells. A category training never saw encodes
        as all zeros and is flagged in ``unknown``; categories read as other number formats ("1.0" for "1") match.
        Rows are named by ``frame``'s index (for a file: from 0 after the header); a row with no modality, or text
        in a numeric column, is a DataError naming it; ``present_elsewhere`` (N bool) marks rows that have a modality
        of another kind (``multimoe.data.kinds``)."""
        n = len(frame)

        def row_name(pos: int) -> str:
            return f"row {frame.index[pos]}"

        def cells(column: str) -> pd.Series:
            return frame[column] if column in frame.columns else pd.Series(np.full(n, np.nan, dtype=object))

        numeric = {c.column: self._new_numeric(frame, c.column, where, row_name)
                   for coders in self.coders.values() for c in coders if c.kind == "numeric"}  # fmt: skip
        present = []
        for coders in self.coders.values():
            columns = [c.column for c in coders if c.column in frame.columns]
            present.append(frame[columns].notna().to_numpy().any(axis=1) if columns else np.zeros(n, dtype=bool))
        present_NM = np.stack(present, axis=1) if present else np.zeros((n, 0), dtype=bool)
        empty = np.flatnonzero(~present_NM.any(axis=1) & (True if present_elsewhere is None else ~present_elsewhere))
        if empty.size:
            raise DataError(
                f"{row_name(int(empty[0]))}{where} has no present modality: every column of every modality is empty "
                f"({empty.size} such rows). Drop these rows or give them at least one observed value"
            )
        values, missing, unknown = self._encode(n, numeric.__getitem__, cells, where, row_name, loose=True)
        return Encoded(values, missing, present_NM, unknown)

    @staticmethod
    def _new_numeric(frame: pd.DataFrame, column: str, where: str, row_name: Callable[[int], str]) -> np.ndarray:
        """Float values of a numeric training column in new rows (NaN where empty or absent)."""
        if column not in frame.columns or not frame[column].notna().any():
            return np.full(len(frame), np.nan)
        values = _numeric(frame[column], column, where, row_name)
        if values is None:
            pos = int(np.flatnonzero(frame[column].notna().to_numpy())[0])
            raise DataError(
                f"column '{column}'{where} is numeric in training but holds only text here (e.g. "
                f"{frame[column].iloc[pos]!r} at {row_name(pos)}); fix those cells or leave them empty"
            )
        return values

    def _encode(
        self,
        n: int,
        numeric_of: Callable[[str], np.ndarray],
        cells_of: Callable[[str], pd.Series],
        where: str,
        row_name: Callable[[int], str],
        loose: bool = False,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Values, missing-cell masks and unseen-category rows of ``n`` rows whose numeric columns' float values
        are ``numeric_of(column)`` and categorical cells ``cells_of(column)``; ``loose``: match categories that
        are numbers by value too."""
        values, missing, unknown = {}, {}, {}
        for mod, coders in self.coders.items():
            blocks, masks, numeric_pos = [], [], []
            for coder in coders:
                if coder.kind == "numeric":
                    numeric_pos.append(len(blocks))
                    blocks.append(numeric_of(coder.column)[:, None])
                    masks.append(np.isnan(blocks[-1]))
                    continue
                cells = cells_of(coder.column)
                absent = cells.isna().to_numpy()
                if coder.categories:
                    text = cells.astype(str).to_numpy()
                    onehot = np.stack([(text == c) & ~absent for c in coder.categories], axis=1).astype("float64")
                    if loose:
                        _match_numbers(onehot, cells.to_numpy(), absent, coder.categories)
                else:
                    onehot = np.zeros((n, 0))
                unknown[coder.column] = ~absent & (onehot.sum(axis=1) == 0)
                blocks.append(onehot)
                masks.append(np.repeat(absent[:, None], onehot.shape[1], axis=1))
            if numeric_pos:
                raw = np.concatenate([blocks[i] for i in numeric_pos], axis=1)
                with np.errstate(all="ignore"):
                    scaled = self.scalers[mod].transform(raw).astype(np.float32)
                bad = ~np.isfinite(scaled) & ~np.isnan(raw)
                if bad.any():
                    r, j = (int(a[0]) for a in np.nonzero(bad))
                    raise DataError(
                        f"column '{coders[numeric_pos[j]].column}'{where}: the value {raw[r, j]:g} at "
                        f"{row_name(r)} overflows float32 once scaled with the training "
                        "statistics; fix the value or rescale the column"
                    )
                for j, i in enumerate(numeric_pos):
                    blocks[i] = scaled[:, j : j + 1]
            X = np.concatenate(blocks, axis=1)
            miss = np.concatenate(masks, axis=1)
            values[mod] = np.where(miss, 0.0, X).astype(np.float32)
            missing[mod] = miss
        return values, missing, unknown

    def feature_names(self) -> dict[str, list[str]]:
        return {mod: [n for c in coders for n in c.names] for mod, coders in self.coders.items()}

    @property
    def modalities(self) -> dict[str, list[str]]:
        """Modality -> its source columns, in order."""
        return {mod: [c.column for c in coders] for mod, coders in self.coders.items()}

    def to_dict(self) -> dict:
        """The fitted preprocessing as JSON: per modality its columns (kind, categories) and scaler statistics."""
        return {
            "scaler": self.scaler_kind,
            "categorical": self.categorical,
            "auto_categorical": list(self.auto_categorical),
            "modalities": {
                mod: {
                    "columns": [c.to_dict() for c in coders],
                    "scaling": scaler_to_dict(self.scalers[mod]) if mod in self.scalers else None,
                }
                for mod, coders in self.coders.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessor:
        """A fitted preprocessor from ``to_dict``'s JSON (no training table needed)."""
        pre = cls(None, d["scaler"])
        pre.categorical, pre.auto_categorical = list(d["categorical"]), list(d["auto_categorical"])
        for mod, spec in d["modalities"].items():
            pre.coders[mod] = [
                ColumnCoder(c["column"], c["kind"], list(c.get("categories", []))) for c in spec["columns"]
            ]
            if spec["scaling"] is not None:
                pre.scalers[mod] = scaler_from_dict(spec["scaling"])
        return pre


def _match_numbers(onehot: np.ndarray, cells: np.ndarray, absent: np.ndarray, categories: list[str]) -> None:
    """In place: a cell that matched no category as text takes the category equal to it as a number (a file read
    in chunks types a column per chunk: "1" in training, "1.0" where a chunk has empty cells)."""
    unmatched = np.flatnonzero(~absent & (onehot.sum(axis=1) == 0))
    category_values = pd.to_numeric(pd.Series(categories), errors="coerce").to_numpy(dtype=np.float64)
    if unmatched.size == 0 or np.isnan(category_values).all():
        return
    cell_values = pd.to_numeric(pd.Series(cells[unmatched]), errors="coerce").to_numpy(dtype=np.float64)
    for j, value in enumerate(category_values):
        hit = unmatched[(cell_values == value) & (onehot[unmatched].sum(axis=1) == 0)]
        onehot[hit, j] = 1.0


def label_text(labels: pd.Series) -> np.ndarray:
    """Class names; whole numbers read as floats (an integer column with empty cells) keep their integer names."""
    if pd.api.types.is_float_dtype(labels) and np.isfinite(labels).all() and (labels == labels.round()).all():
        labels = labels.astype("int64")
    return labels.astype(str).to_numpy()


def label_kind(labels: pd.Series) -> str:
    """ "integer" when the class names are whole numbers (as ``_label_text`` names them), else "text": what a
    predictor's ``classes_`` are typed as."""
    if pd.api.types.is_integer_dtype(labels) and not pd.api.types.is_bool_dtype(labels):
        return "integer"
    if pd.api.types.is_float_dtype(labels) and np.isfinite(labels).all() and (labels == labels.round()).all():
        return "integer"
    return "text"
