"""Built-in datasets with non-tabular modalities: hapt (restricted unpickler, windows, user-wise split) and
mfeat-image (pix as a 16 x 15 image, orientation checked); Table's sources."""

import gzip
import os
import pickle

import numpy as np
import pandas as pd
import pytest
from conftest import needs_package

from multimoe.config import DataConfig
from multimoe.data import hapt, safe_pickle
from multimoe.data.groups import split_groups
from multimoe.data.kinds import ImageSource, SeriesSource
from multimoe.data.table import Table, build_table
from multimoe.errors import DataError
from multimoe.registry import DATASETS


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_calls_anything_else_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump({1: [Payload(marker)]}, f, protocol=2)
    with pytest.raises(DataError, match=r"evil.*names (posix|os)\.system, which this reader does not admit"):
        hapt.read_recordings(path, "evil")
    assert not marker.exists()


@pytest.mark.parametrize("obj", [eval, getattr, __import__])
def test_builtins_are_refused_too(obj):
    with pytest.raises(DataError, match="does not admit"):
        safe_pickle.restricted_load(__import__("io").BytesIO(pickle.dumps(obj)), "x")


def test_admitted_names_refuse_unexpected_arguments():
    with pytest.raises(DataError, match="codec 'zlib'"):
        safe_pickle._latin1("abc", "zlib")
    assert safe_pickle._latin1("\xff", "latin1") == b"\xff"
    with pytest.raises(DataError, match="only pandas stand-ins"):
        safe_pickle._reconstructor(dict, object, None)
    with pytest.raises(DataError, match="not an index"):
        safe_pickle._new_index(dict, {})


def test_a_truncated_pickle_is_a_data_error(tmp_path):
    path = tmp_path / "cut.pkl.gz"
    with gzip.open(path, "wb") as f:
        f.write(pickle.dumps({1: [[1.0, 2.0, 3.0]]}, protocol=2)[:-5])
    with pytest.raises(DataError, match="cut.*cannot read the pickle"):
        hapt.read_recordings(path, "cut")


def recording(labels, seed=0):
    rng = np.random.default_rng(seed)
    columns = {c: rng.normal(size=len(labels)) for names in hapt.SIGNALS.values() for c in names}
    return {**columns, "label": np.asarray(labels)}


def test_windows_stay_inside_one_activity_run_with_half_overlap():
    labels = [-1] * 10 + [1] * 300 + [7] * 200 + [4] * 127 + [4] * 0 + [2] * 192
    rec = recording(labels)
    w = hapt.windows([(3, rec)])
    # run of 300 activity-1 samples: starts 10, 74, 138 (202 would end past 310); 127 samples of 4: none; 192 of 2: 2
    assert w.start_N.tolist() == [10, 74, 138, 637, 701]
    assert w.activity_N.tolist() == [1, 1, 1, 2, 2] and set(w.user_N) == {3}
    np.testing.assert_array_equal(w.signals["gyro"][1, 2], rec["gyro-z"][74:202].astype(np.float32))
    assert w.signals["acc"].shape == (5, 3, 128)


@pytest.fixture(scope="module")
def hapt_table():
    return build_table(DataConfig(name="hapt"))


@needs_package("hapt")
def test_hapt_windows_users_and_modalities(hapt_table):
    t = hapt_table
    assert len(t.frame) == 10411 and t.label == "activity" and t.modalities == {}
    assert t.frame["activity"].value_counts().to_dict() == {
        "STANDING": 1979, "LAYING": 1958, "SITTING": 1801, "WALKING": 1722, "WALKING_UPSTAIRS": 1544,
        "WALKING_DOWNSTAIRS": 1407}  # fmt: skip
    assert t.frame["user"].nunique() == 30 and t.frame["recording"].nunique() == 61
    assert {m: s.input_shape().shape for m, s in t.sources.items()} == {"acc": (3, 128), "gyro": (3, 128)}
    assert t.sources["acc"].channels == ["x", "y", "z"] and t.sources["acc"].presence().all()
    acc = t.sources["acc"].values_NVU
    walking = t.frame["activity"].to_numpy() == "WALKING"
    laying = t.frame["activity"].to_numpy() == "LAYING"
    # in g: about 1 g of gravity in total; lying still moves far less than walking
    assert 0.9 < np.linalg.norm(acc[walking].mean(axis=2), axis=1).mean() < 1.1
    assert acc[laying].std(axis=2).mean() < 0.2 * acc[walking].std(axis=2).mean()


@needs_package("hapt")
def test_hapt_splits_by_user(hapt_table):
    users = hapt_table.frame[hapt.GROUP].to_numpy()
    rows = split_groups(users, 0, 0.15, 0.15)
    sets = {k: set(users[v]) for k, v in rows.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sum(len(v) for v in rows.values()) == len(users)
    assert [len(sets[k]) for k in ("train", "val", "test")] == [20, 5, 5]


def test_group_split_is_seeded_whole_groups_and_needs_three():
    groups = np.repeat(np.arange(10), 10)
    a, b, c = (split_groups(groups, s, 0.2, 0.2) for s in (0, 0, 1))
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.array_equal(a["test"], c["test"])
    assert [len(a[k]) for k in ("train", "val", "test")] == [60, 20, 20]
    for k, v in a.items():
        assert np.isin(groups, groups[v])[v].all() and (np.bincount(groups[v]) % 10 == 0).all(), k
    with pytest.raises(DataError, match="at least 3 groups"):
        split_groups(np.array([1, 1, 2, 2]), 0, 0.2, 0.2)


@needs_package("mfeat-image")
def test_mfeat_pix_is_an_upright_16_by_15_image(tmp_path):
    from PIL import Image

    t = build_table(DataConfig(name="mfeat-image"))
    assert list(t.modalities) == ["fou", "fac", "kar", "zer", "mor"] and "pix0" not in t.frame
    pix = t.sources["pix"]
    assert pix.input_shape().shape == (1, 16, 15)
    mfeat = build_table(DataConfig(name="mfeat"))
    np.testing.assert_array_equal(pix.array[7, 0, 2], mfeat.frame[[f"pix{30 + i}" for i in range(15)]].iloc[7])
    digits, image = t.frame["digit"].to_numpy(), pix.array[:, 0]
    for d in range(10):  # for a look: a 3 x 10 sheet of digits, ink dark (the orientation was checked this way)
        sheet = np.concatenate([255 - image[digits == d][:3].reshape(-1, 15) / 6 * 255], axis=0)
        Image.fromarray(sheet.astype(np.uint8)).resize((150, 480)).save(tmp_path / f"digit{d}.png")
    seven, three = image[digits == 7].mean(axis=0), image[digits == 3].mean(axis=0)
    assert seven[:2].mean() > 2 * seven[-2:].mean()  # a 7's bar is at the top: not upside down
    assert three[:, -5:].mean() > 1.5 * three[:, :5].mean()  # a 3 opens to the left: not mirrored


def test_a_table_checks_its_sources_rows_and_names():
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "y": [0, 1, 0]})
    series = SeriesSource.from_array("s", np.zeros((3, 2, 4)))
    t = Table.from_frame(frame, "y", {"a": ["a"]})
    t.sources = {"s": series}
    t.validate()
    with pytest.raises(DataError, match="modality 's' .series. has 2 rows, the table 3"):
        Table(name="t", frame=frame, label="y", modalities={}, sources={"s": series.subset(np.array([0, 1]))})
    with pytest.raises(DataError, match="modality 'a' is given twice: as columns and as an image"):
        Table(name="t", frame=frame, label="y", modalities={"a": ["a"]},
              sources={"a": ImageSource("a", array=np.zeros((3, 2, 2)))})  # fmt: skip


def test_registry_names_the_new_datasets_with_licenses():
    for name in ("hapt", "mfeat-image"):
        assert "CC BY 4.0" in DATASETS.get(name).license
