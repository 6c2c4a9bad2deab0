"""The user's own table (multimoe/data/table.py): YAML spec with a CSV or Parquet file."""

import pytest
from conftest import frame_table

from multimoe.config import DataConfig
from multimoe.data.prepare import prepare
from multimoe.data.table import load_spec


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
