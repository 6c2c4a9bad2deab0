"""From a Table to train/validation/test data: seeded split, masking, preprocessing fit on train only.

Order of operations (every fitted statistic sees the training split only, under the training protocol):
1. labels; rows without a label are dropped (counted in ``info``);
2. natural presence, modalities in the table's order: a table modality whose every cell is empty is missing, a
   source's (series, image, text, embedding) says itself which rows have it; a row with nothing present is an error;
3. train/validation/test split from the seed (``data.split``): stratified by class over rows (70/15/15 by default),
   or by group (whole groups of the table's group column, e.g. people: ``groups.split_groups``);
4. the protocol's presence mask for every row (depends only on the seed);
5. the preprocessor is fit on the training rows' present table modalities: numeric columns are scaled, categorical
   ones one-hot encoded with the training categories (a category unseen in training encodes as all zeros and is
   counted); missing cells become 0 with a missing-cell mask; each source fits its own statistics (channel or pixel
   means and deviations, time scale) on the training rows where the protocol keeps it;
6. every row of the table modalities is transformed with the fitted preprocessor; sources make their tensors batch
   by batch (``MultimodalData``).

The preprocessing is also returned as JSON (``Splits.preprocessing``, written by ``train`` as the run folder's
``preprocess.json``: the preprocessor of ``data/preprocess.py``, the modality order and each source's spec entry and
fitted state), from which ``multimoe predict`` encodes new rows as the training rows were.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import sklearn
import torch
from sklearn.model_selection import train_test_split

from multimoe.config import DataConfig
from multimoe.data.dataset import DataSchema, MultimodalData, Splits
from multimoe.data.groups import split_groups
from multimoe.data.kinds import KindShape
from multimoe.data.preprocess import PREPROCESS_FORMAT, PREPROCESS_FORMAT_SOURCES, Preprocessor, label_kind, label_text
from multimoe.data.protocols import apply_protocol
from multimoe.data.table import Table
from multimoe.errors import DataError


def natural_presence(table: Table) -> np.ndarray:
    """N x M, modalities in ``table.order``: a table modality is present in a row unless every one of its cells is
    empty; a source says which rows have it (an empty path or text, an all-NaN embedding, a series without a value
    are absent); a row with nothing present is an error naming it."""
    N = len(table.frame)
    cols = [
        table.sources[m].presence() if m in table.sources else table.frame[table.modalities[m]].notna().to_numpy()
        for m in table.order
    ]
    natural_NM = np.stack([np.asarray(c).reshape(N, -1).any(axis=1) for c in cols], axis=1)
    empty = np.flatnonzero(~natural_NM.any(axis=1))
    if empty.size:
        what = "every column of every modality is empty" if not table.sources else "no modality has a value"
        raise DataError(
            f"{table.row_name(int(empty[0]))}{table.where} has no present modality: {what} ({empty.size} such rows). "
            "Drop these rows or give them at least one observed value"
        )
    return natural_NM


def split(table: Table, labels: np.ndarray, cfg: DataConfig, seed: int, test_fraction: float,
          where: str = "") -> dict[str, np.ndarray]:  # fmt: skip
    """The rows of train / val / test by ``cfg.split``: ``stratified`` (``split_rows``), ``group`` (whole groups of
    the table's group column, ``split_groups``), or ``auto``: by group when the table names a group column."""
    how = cfg.split if cfg.split != "auto" else ("group" if table.group else "stratified")
    if how == "stratified":
        return split_rows(labels, seed, cfg.val_fraction, test_fraction, where)
    if table.group is None:
        raise DataError(
            f"data.split=group needs a group column{table.where}: name it in the table spec (group: <column>) or "
            "with Table(group=...); or use data.split=stratified"
        )
    rows = split_groups(table.frame[table.group].to_numpy(), seed, cfg.val_fraction, test_fraction,
                        f" '{table.group}'{table.where}")  # fmt: skip
    for name in ("train", "val", "test"):
        if rows[name].size == 0:
            raise DataError(f"the split by group '{table.group}'{table.where} leaves the {name} split empty")
    return rows


def split_rows(
    labels: np.ndarray, seed: int, val_fraction: float, test_fraction: float, where: str = ""
) -> dict[str, np.ndarray]:
    """Seeded stratified split of row positions into train / val / test. ``test_fraction=0`` (the scikit-learn
    estimator, whose caller keeps its own test data) splits train / val only and names the validation rows as the
    test rows too."""
    rows = np.arange(len(labels))
    shares = f"{1 - val_fraction - test_fraction:.0%}/{val_fraction:.0%}/{test_fraction:.0%}"
    if test_fraction == 0:
        shares = f"{1 - val_fraction:.0%}/{val_fraction:.0%} train/validation"
    counts = pd.Series(labels).value_counts()
    if counts.iloc[-1] < 2:
        raise DataError(
            f"class '{counts.index[-1]}'{where} has a single row: a stratified {shares} split cannot place it in "
            "training and in evaluation; merge it into another class or drop its row"
        )
    try:
        rest, test = rows, None
        if test_fraction > 0:
            rest, test = train_test_split(rows, test_size=test_fraction, random_state=seed, stratify=labels)
        val_share = val_fraction / (1.0 - test_fraction)
        train, val = train_test_split(rest, test_size=val_share, random_state=seed + 1, stratify=labels[rest])
        test = val if test is None else test
    except ValueError as e:
        raise DataError(
            f"cannot make a stratified {shares} split of {len(labels)} labelled rows in {len(counts)} classes{where} "
            f"(the rarest, '{counts.index[-1]}', has {counts.iloc[-1]} rows): every split needs at least one row of "
            f"every class; add rows, merge rare classes, or change data.val_fraction / data.test_fraction "
            f"[scikit-learn: {e}]"
        ) from None
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _labelled(table: Table) -> tuple[Table, int]:
    """The table without rows whose label is empty (sources included), and how many were dropped."""
    keep = table.frame[table.label].notna().to_numpy()
    dropped = int((~keep).sum())
    if dropped:  # the original index keeps naming rows in messages
        table = table.subset(np.flatnonzero(keep))
    if len(table.frame) == 0:
        raise DataError(f"no labelled rows{table.where}: every value of the label column '{table.label}' is empty")
    return table, dropped


def _classes(table: Table, labels_text: np.ndarray, rows: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """The classes seen in training (natural order) and every row's class index; errors for a single class or a
    class that appears only outside training."""
    classes = sorted(np.unique(labels_text[rows["train"]]).tolist(), key=_natural_key)
    if len(classes) < 2:
        raise DataError(
            f"the label '{table.label}'{table.where} has a single class ({classes[0]!r}) in training; "
            "a classifier needs at least two"
        )
    for name in ("val", "test"):
        unseen = sorted(set(labels_text[rows[name]]) - set(classes))
        if unseen:
            raise DataError(
                f"class {unseen[0]!r} of the label '{table.label}'{table.where} appears in the {name} split but never "
                "in training; merge it into another class or drop its rows"
            )
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.array([index.get(t, -1) for t in labels_text], dtype=np.int64)


def prepare(
    table: Table, cfg: DataConfig, seed: int, eval_missing: str | None = None, test_split: bool = True
) -> Splits:
    """Split, mask and preprocess ``table``. ``eval_missing`` applies another protocol to validation and test
    while the preprocessing stays fit under the training protocol ``cfg.missing``. ``test_split=False`` keeps no
    test rows (the scikit-learn estimator: its caller holds the test data); the test split is then the validation
    split. ``Splits.preprocessing`` is the fitted preprocessing as JSON (the run folder's preprocess.json)."""
    table, dropped = _labelled(table)
    labels_text = label_text(table.frame[table.label])
    natural_NM = natural_presence(table)
    where = f"{table.where} (label '{table.label}'{f'; {dropped} rows without a label dropped' if dropped else ''})"
    rows = split(table, labels_text, cfg, seed, cfg.test_fraction if test_split else 0.0, where)
    classes, labels_N = _classes(table, labels_text, rows)

    fit_NM = apply_protocol(natural_NM, cfg.missing, seed)
    eval_NM = fit_NM if eval_missing is None else apply_protocol(natural_NM, eval_missing, seed)
    column = {m: i for i, m in enumerate(table.order)}  # a modality's column of the presence masks
    if cfg.complete_cases:
        rows = complete_rows(rows, fit_NM, eval_NM, f"{table.name} under data.missing={eval_missing or cfg.missing}")
    pre = Preprocessor(table, cfg.scaler).fit(rows["train"], fit_NM[:, [column[m] for m in table.modalities]])
    values, missing = pre.transform(np.arange(len(table.frame)))
    names = pre.feature_names()
    sources = {m: _fit_source(table, m, rows["train"], fit_NM[:, column[m]]) for m in table.sources}
    inputs = tuple(
        sources[m].input_shape() if m in sources else KindShape("table", (len(names[m]),)) for m in table.order
    )
    features = tuple(math.prod(s.shape) for s in inputs)
    schema = DataSchema(tuple(table.order), features, tuple(classes), inputs)

    def make(split: str, present_NM: np.ndarray) -> MultimodalData:
        r = rows[split]
        return MultimodalData(
            schema=schema,
            values={m: torch.from_numpy(values[m][r]) for m in table.modalities},
            cell_missing={m: torch.from_numpy(missing[m][r]) for m in table.modalities},
            present_NM=torch.from_numpy(present_NM[r]),
            labels_N=torch.from_numpy(labels_N[r]),
            rows_N=r,
            sources=sources,
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
    preprocessing = {
        "format": PREPROCESS_FORMAT if not sources else PREPROCESS_FORMAT_SOURCES,
        "label": table.label,
        "label_kind": label_kind(table.frame[table.label]),
        "classes": classes,
        **pre.to_dict(),
        "scikit_learn": sklearn.__version__,
    }
    if sources:  # the model's modality order, and what each source learned (multimoe predict rebuilds them)
        preprocessing["order"] = list(table.order)
        preprocessing["sources"] = {m: s.state() for m, s in sources.items()}
    splits = Splits(make("train", fit_NM), make("val", eval_NM), make("test", eval_NM), natural_NM, rows, info)
    splits.preprocessing = preprocessing
    return splits


def _fit_source(table: Table, modality: str, train_rows: np.ndarray, present_N: np.ndarray):
    """A copy of the table's source (the table's own stays as it was) fit on the training rows where the training
    protocol keeps it; an error when it is never present there."""
    if not present_N[train_rows].any():
        raise DataError(
            f"modality '{modality}' ({table.kind(modality)}){table.where} is never present in the training split "
            f"(present in {int(present_N.sum())} of {len(present_N)} rows in all): nothing to learn it from; drop "
            "the modality or give more rows a value"
        )
    return copy.copy(table.sources[modality]).fit(train_rows, present_N)


def complete_rows(rows: dict, fit_NM: np.ndarray, eval_NM: np.ndarray, where: str) -> dict[str, np.ndarray]:
    """``data.complete_cases``: the rows of each split that have every modality (training under the training
    protocol, validation and test under the evaluated one); an empty split is an error naming the counts."""
    kept = {k: r[(fit_NM if k == "train" else eval_NM)[r].all(axis=1)] for k, r in rows.items()}
    empty = [k for k in ("train", "val", "test") if kept[k].size == 0]
    if empty:
        counts = ", ".join(f"{k} {kept[k].size} of {rows[k].size}" for k in ("train", "val", "test"))
        raise DataError(
            f"data.complete_cases keeps only samples with every modality present, and {where} the {empty[0]} split "
            f"has none (complete samples: {counts}); use a lower missing rate or data.complete_cases=false"
        )
    return kept


def _count_unknown(pre: Preprocessor, table: Table, rows: dict, present_NM: np.ndarray) -> dict[str, dict[str, int]]:
    """Per split and column: present cells whose category training never saw (encoded as all zeros)."""
    mod_of = {c: table.order.index(m) for m, cols in table.modalities.items() for c in cols}
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
