"""Split, masking and preprocessing (multimoe/data/prepare.py): stratified seeded splits, statistics from the
training split only, missing cells and modalities, categories."""

import numpy as np
import pytest
import torch
from conftest import frame_table

from multimoe.config import DataConfig
from multimoe.data.prepare import prepare, split_rows
from multimoe.data.table import Table
from multimoe.errors import DataError


def test_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(4), 50).astype(str)
    s = split_rows(labels, seed=0, val_fraction=0.15, test_fraction=0.15)
    assert sum(len(v) for v in s.values()) == 200
    assert len(set(s["train"]) | set(s["val"]) | set(s["test"])) == 200
    assert abs(len(s["train"]) - 140) <= 2 and abs(len(s["test"]) - 30) <= 2
    for part in s.values():
        counts = np.bincount(labels[part].astype(int))
        assert counts.max() - counts.min() <= 1
    assert all(np.array_equal(s[k], split_rows(labels, 0, 0.15, 0.15)[k]) for k in s)
    assert not np.array_equal(s["test"], split_rows(labels, 1, 0.15, 0.15)["test"])


def test_preprocessing_is_fit_on_the_training_split_only():
    table = frame_table()
    cfg = DataConfig(missing="natural")
    splits = prepare(table, cfg, seed=0)
    train_rows = splits.split_rows["train"]
    a1 = splits.train.values["a"][:, 0]
    assert abs(float(a1.mean())) < 1e-5  # standardised with training statistics
    # changing every non-training row leaves the training encoding untouched
    changed = table.frame.copy()
    others = np.setdiff1d(np.arange(len(changed)), train_rows)
    changed.loc[others, "a1"] = 1e6
    splits2 = prepare(Table.from_frame(changed, "y", table.modalities, table.categorical), cfg, seed=0)
    assert torch.equal(splits2.train.values["a"], splits.train.values["a"])
    assert splits2.test.values["a"][:, 0].min() > 1e3


def test_cells_and_modalities_missing_become_zero_with_masks():
    splits = prepare(frame_table(), DataConfig(missing="natural"), seed=0)
    rows = np.concatenate([splits.split_rows[k] for k in ("train", "val", "test")])
    data = {k: getattr(splits, k) for k in ("train", "val", "test")}
    present_b = torch.cat([d.present_NM[:, 1] for d in data.values()])
    assert int((~present_b).sum()) == 10
    cell = torch.cat([d.cell_missing["a"][:, 1] for d in data.values()])
    assert int(cell.sum()) == 10 and set(rows[cell.numpy()]) == set(range(10, 20))
    for d in data.values():
        batch = d.batch(torch.arange(len(d)))
        assert (batch.inputs["b"][~batch.present_BM[:, 1]] == 0).all()
        assert (batch.inputs["a"][batch.cell_missing["a"]] == 0).all()
        assert torch.isfinite(batch.inputs["a"]).all()


def test_categories_unseen_in_training_are_counted_not_fatal():
    table = frame_table(n=300)
    splits0 = prepare(table, DataConfig(missing="natural"), seed=0)
    test_row = splits0.split_rows["test"][-1]
    df = table.frame.copy()
    df.loc[test_row, "color"] = "ultraviolet"
    splits = prepare(Table.from_frame(df, "y", table.modalities, table.categorical), DataConfig(), seed=0)
    assert splits.info["unknown_categories"] == {"test": {"color": 1}}


def test_text_columns_become_categorical_automatically():
    df = frame_table().frame
    t = Table.from_frame(df, "y", {"a": ["a1", "a2"], "b": ["b1", "color"]})  # color not declared
    splits = prepare(t, DataConfig(), seed=0)
    assert splits.info["auto_categorical_columns"] == ["color"]
    assert splits.schema.features == (2, 4)


def test_row_without_any_modality_is_an_error_naming_it():
    df = frame_table().frame
    df.loc[42, ["a1", "a2", "b1", "color"]] = np.nan
    table = Table.from_frame(df, "y", {"a": ["a1", "a2"], "b": ["b1", "color"]}, ["color"])
    with pytest.raises(DataError, match="row 42 has no present modality"):
        prepare(table, DataConfig(), seed=0)
