"""From a Table to train/validation/test tensors: seeded stratified split, masking, preprocessing fit on train only.

Order of operations (every fitted statistic sees the training split only, under the training protocol):
1. labels; rows without a label are dropped (counted in ``info``);
2. natural presence: a modality whose every cell is empty is missing; a row with nothing present is an error;
3. stratified train/validation/test split from the seed;
4. the protocol's presence mask for every row (depends only on the seed);
5. the preprocessor is fit on the training rows' present modalities: numeric columns are scaled, categorical ones
   one-hot encoded with the training categories (a category unseen in training encodes as all zeros and is
   counted); missing cells become 0 with a missing-cell mask;
6. every row is transformed with the fitted preprocessor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import QuantileTransformer, StandardScaler

from multimoe.config import DataConfig
from multimoe.data.dataset import DataSchema, MultimodalData, Splits
from multimoe.data.protocols import apply_protocol
from multimoe.data.table import Table
from multimoe.errors import DataError


def natural_presence(table: Table) -> np.ndarray:
    """N x M: a modality is present in a row unless every one of its cells is empty; a row with nothing present
    is an error naming it."""
    cols = [table.frame[c].notna().to_numpy() for c in table.modalities.values()]
    natural_NM = np.stack([np.asarray(c).reshape(len(table.frame), -1).any(axis=1) for c in cols], axis=1)
    empty = np.flatnonzero(~natural_NM.any(axis=1))
    if empty.size:
        raise DataError(
            f"{table.row_name(int(empty[0]))}{table.where} has no present modality: every column of every modality "
            f"is empty ({empty.size} such rows). Drop these rows or give them at least one observed value"
        )
    return natural_NM


def split_rows(
    labels: np.ndarray, seed: int, val_fraction: float, test_fraction: float, where: str = ""
) -> dict[str, np.ndarray]:
    """Seeded stratified split of row positions into train / val / test."""
    rows = np.arange(len(labels))
    shares = f"{1 - val_fraction - test_fraction:.0%}/{val_fraction:.0%}/{test_fraction:.0%}"
    counts = pd.Series(labels).value_counts()
    if counts.iloc[-1] < 2:
        raise DataError(
            f"class '{counts.index[-1]}'{where} has a single row: a stratified {shares} split cannot place it in "
            "training and in evaluation; merge it into another class or drop its row"
        )
    try:
        rest, test = train_test_split(rows, test_size=test_fraction, random_state=seed, stratify=labels)
        val_share = val_fraction / (1.0 - test_fraction)
        train, val = train_test_split(rest, test_size=val_share, random_state=seed + 1, stratify=labels[rest])
    except ValueError as e:
        raise DataError(
            f"cannot make a stratified {shares} split of {len(labels)} labelled rows in {len(counts)} classes{where} "
            f"(the rarest, '{counts.index[-1]}', has {counts.iloc[-1]} rows): every split needs at least one row of "
            f"every class; add rows, merge rare classes, or change data.val_fraction / data.test_fraction "
            f"[scikit-learn: {e}]"
        ) from None
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _numeric(series: pd.Series, column: str, table: Table) -> np.ndarray | None:
    """Float values of a column (NaN for empty cells), None when the column is text (treated as categorical)."""
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
                f"column '{column}'{table.where} is numeric but {table.row_name(pos)} holds the text "
                f"{series.iloc[pos]!r} "
                f"({int(bad.sum())} such cells); fix those cells, or list '{column}' under categorical"
            )
        values = parsed.to_numpy(dtype="float64", na_value=np.nan)
    inf = np.isinf(values)
    if inf.any():
        pos = int(np.flatnonzero(inf)[0])
        raise DataError(
            f"column '{column}'{table.where} holds an infinite value at {table.row_name(pos)} "
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


class Preprocessor:
    """Per-modality encoding fit on the training split: scaled numeric columns, one-hot categorical columns."""

    def __init__(self, table: Table, scaler: str = "standard") -> None:
        self.table = table
        self.scaler_kind = scaler
        self.coders: dict[str, list[ColumnCoder]] = {}
        self.scalers: dict[str, object] = {}
        self.numeric: dict[str, np.ndarray] = {}  # column -> float values for all rows (parsed once)
        self.auto_categorical: list[str] = []
        self.unknown_rows: dict[str, np.ndarray] = {}  # categorical column -> rows with a category unseen in fit

    def _column_values(self, column: str) -> np.ndarray | None:
        if column in self.table.categorical:
            return None
        if column not in self.numeric:
            values = _numeric(self.table.frame[column], column, self.table)
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
        values, missing = {}, {}
        for mod, coders in self.coders.items():
            blocks, masks, numeric_pos = [], [], []
            for coder in coders:
                if coder.kind == "numeric":
                    numeric_pos.append(len(blocks))
                    blocks.append(self.numeric[coder.column][rows][:, None])
                    masks.append(np.isnan(blocks[-1]))
                    continue
                cells = frame[coder.column].iloc[rows]
                absent = cells.isna().to_numpy()
                text = cells.astype(str).to_numpy()
                onehot = np.stack([(text == c) & ~absent for c in coder.categories], axis=1).astype("float64")
                if not coder.categories:
                    onehot = np.zeros((len(rows), 0))
                self.unknown_rows[coder.column] = ~absent & (onehot.sum(axis=1) == 0)
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
                        f"column '{coders[numeric_pos[j]].column}'{self.table.where}: the value {raw[r, j]:g} at "
                        f"{self.table.row_name(int(rows[r]))} overflows float32 once scaled with the training "
                        "statistics; fix the value or rescale the column"
                    )
                for j, i in enumerate(numeric_pos):
                    blocks[i] = scaled[:, j : j + 1]
            X = np.concatenate(blocks, axis=1)
            miss = np.concatenate(masks, axis=1)
            values[mod] = np.where(miss, 0.0, X).astype(np.float32)
            missing[mod] = miss
        return values, missing

    def feature_names(self) -> dict[str, list[str]]:
        return {mod: [n for c in coders for n in c.names] for mod, coders in self.coders.items()}


def _label_text(labels: pd.Series) -> np.ndarray:
    """Class names; whole numbers read as floats (an integer column with empty cells) keep their integer names."""
    if pd.api.types.is_float_dtype(labels) and np.isfinite(labels).all() and (labels == labels.round()).all():
        labels = labels.astype("int64")
    return labels.astype(str).to_numpy()


def _labelled(table: Table) -> tuple[Table, int]:
    """The table without rows whose label is empty, and how many were dropped."""
    keep = table.frame[table.label].notna().to_numpy()
    dropped = int((~keep).sum())
    if dropped:  # the original index keeps naming rows in messages
        table = dataclasses.replace(table, frame=table.frame.loc[keep])
    if len(table.frame) == 0:
        raise DataError(f"no labelled rows{table.where}: every value of the label column '{table.label}' is empty")
    return table, dropped


def _classes(table: Table, label_text: np.ndarray, rows: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """The classes seen in training (natural order) and every row's class index; errors for a single class or a
    class that appears only outside training."""
    classes = sorted(np.unique(label_text[rows["train"]]).tolist(), key=_natural_key)
    if len(classes) < 2:
        raise DataError(
            f"the label '{table.label}'{table.where} has a single class ({classes[0]!r}) in training; "
            "a classifier needs at least two"
        )
    for name in ("val", "test"):
        unseen = sorted(set(label_text[rows[name]]) - set(classes))
        if unseen:
            raise DataError(
                f"class {unseen[0]!r} of the label '{table.label}'{table.where} appears in the {name} split but never "
                "in training; merge it into another class or drop its rows"
            )
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.array([index.get(t, -1) for t in label_text], dtype=np.int64)


def prepare(table: Table, cfg: DataConfig, seed: int, eval_missing: str | None = None) -> Splits:
    """Split, mask and preprocess ``table``. ``eval_missing`` applies another protocol to validation and test
    while the preprocessing stays fit under the training protocol ``cfg.missing``."""
    if table.sources:  # multimoe.data.kinds: sources are built and tested, training on them is not wired yet
        kinds = ", ".join(f"{m} ({s.kind})" for m, s in table.sources.items())
        raise DataError(
            f"{table.name}: the modalities {kinds} are not tables of columns; training on series, image, text and "
            "embedding modalities is not supported yet"
        )
    table, dropped = _labelled(table)
    label_text = _label_text(table.frame[table.label])
    natural_NM = natural_presence(table)
    where = f"{table.where} (label '{table.label}'{f'; {dropped} rows without a label dropped' if dropped else ''})"
    rows = split_rows(label_text, seed, cfg.val_fraction, cfg.test_fraction, where)
    classes, labels_N = _classes(table, label_text, rows)

    fit_NM = apply_protocol(natural_NM, cfg.missing, seed)
    eval_NM = fit_NM if eval_missing is None else apply_protocol(natural_NM, eval_missing, seed)
    pre = Preprocessor(table, cfg.scaler).fit(rows["train"], fit_NM)
    values, missing = pre.transform(np.arange(len(table.frame)))
    names = pre.feature_names()
    schema = DataSchema(tuple(table.modalities), tuple(len(names[m]) for m in table.modalities), tuple(classes))

    def make(split: str, present_NM: np.ndarray) -> MultimodalData:
        r = rows[split]
        return MultimodalData(
            schema=schema,
            values={m: torch.from_numpy(values[m][r]) for m in schema.modalities},
            cell_missing={m: torch.from_numpy(missing[m][r]) for m in schema.modalities},
            present_NM=torch.from_numpy(present_NM[r]),
            labels_N=torch.from_numpy(labels_N[r]),
            rows_N=r,
        )

    info = {
        "dataset": table.name,
        "synthetic": table.synthetic,
        "rows": {k: int(v.size) for k, v in rows.items()},
        "dropped_unlabelled_rows": dropped,
        "auto_categorical_columns": pre.auto_categorical,
        "unknown_categories": _count_unknown(pre, table, rows, eval_NM),
        "feature_names": names,
    }
    return Splits(make("train", fit_NM), make("val", eval_NM), make("test", eval_NM), natural_NM, rows, info)


def _count_unknown(pre: Preprocessor, table: Table, rows: dict, present_NM: np.ndarray) -> dict[str, dict[str, int]]:
    """Per split and column: present cells whose category training never saw (encoded as all zeros)."""
    mod_of = {c: m for m, cols in enumerate(table.modalities.values()) for c in cols}
    out: dict[str, dict[str, int]] = {}
    for split in ("val", "test"):
        r = rows[split]
        counts = {col: int((mask[r] & present_NM[r, mod_of[col]]).sum()) for col, mask in pre.unknown_rows.items()}
        counts = {k: v for k, v in counts.items() if v}
        if counts:
            out[split] = counts
    return out


def _natural_key(text: str):
    """Sort class names numerically when they are numbers ("2" < "10")."""
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)
