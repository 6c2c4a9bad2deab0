"""Rendered sweep tables (multimoe/bench/render.py): means, paired marks and the primary metric, on cells whose
numbers were chosen by hand (binary tasks are read by AUC, multiclass ones by accuracy)."""

import pandas as pd
import pytest

from multimoe.bench import append_cell, render
from multimoe.bench.sweep import Sweep

SEEDS = [0, 1, 2]
BINARY = {"data.name": "support2", "data.missing": "natural"}
MULTI = {"data.name": "mfeat", "data.missing": "mcar:0.3"}
# (point, method) -> per-seed (accuracy, auc); on the binary task accuracy runs against AUC, so reading the wrong
# metric flips the marks
VALUES = {
    ("binary", "ref"): [(0.80, 0.80), (0.80, 0.82), (0.80, 0.81)],
    ("binary", "good"): [(0.70, 0.85), (0.70, 0.86), (0.70, 0.88)],
    ("binary", "bad"): [(0.90, 0.70), (0.90, 0.75), (0.90, 0.72)],
    ("multi", "ref"): [(0.90, 0.99), (0.92, 0.99), (0.91, 0.99)],
    ("multi", "good"): [(0.95, 0.99), (0.96, 0.99), (0.97, 0.99)],
    ("multi", "bad"): [(0.92, 0.99), (0.89, 0.99), (0.92, 0.99)],  # differences +0.02, -0.03, +0.01: noise
}


@pytest.fixture
def rendered(tmp_path):
    sweep = Sweep(name="marks", methods={m: {"preset": "-", "overrides": {}} for m in ("ref", "good", "bad")},
                  grid=[BINARY, MULTI], seeds=SEEDS, reference="ref")  # fmt: skip
    for cell in sweep.cells():
        which = "binary" if cell["point"] is BINARY else "multi"
        acc, auc = VALUES[which, cell["method"]][cell["seed"]]
        append_cell(tmp_path / "cells.jsonl", {**cell, "status": "ok", "dataset": cell["point"]["data.name"],
                    "classes": 2 if which == "binary" else 10, "test": {"n": 100, "accuracy": acc, "f1": acc,
                    "auc": auc}, "parameters": 10, "active_parameters": 5, "flops_per_sample": 2e6,
                    "train_seconds": 3.0, "epochs_run": 4, "best_epoch": 2})  # fmt: skip
    readme = render(sweep, tmp_path)
    return readme.read_text(), pd.read_csv(readme.parent / "summary.csv")


def table_rows(text: str) -> dict[str, list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def test_primary_metric_marks_and_means(rendered):
    text, _ = rendered
    rows = table_rows(text)
    assert rows["method"] == ["support2 natural (auc)", "mfeat mcar:0.3 (accuracy)"]
    assert rows["ref"] == ["0.810 ± 0.010", "0.910 ± 0.010"]
    assert rows["good"] == ["0.863 ± 0.015 ▲", "0.960 ± 0.010 ▲"]
    assert rows["bad"] == ["0.723 ± 0.025 ▼", "0.910 ± 0.017 ≈"]


def test_paired_statistics_in_the_summary(rendered):
    _, summary = rendered
    good = summary[(summary.method == "good") & (summary.metric == "auc")].iloc[0]
    # differences 0.05, 0.04, 0.07: mean 0.05333, std 0.015275, 95 % t half-width 4.302653 * 0.015275 / sqrt(3)
    assert good["diff"] == pytest.approx(0.053333, abs=1e-5)
    assert good["diff_low"] == pytest.approx(0.053333 - 0.037946, abs=1e-5)
    assert good["diff_high"] == pytest.approx(0.053333 + 0.037946, abs=1e-5)
    assert good["p"] == pytest.approx(0.02626, abs=2e-4)  # t = 6.047 with 2 degrees of freedom
    assert good["verdict"] == "better" and bool(good["primary"])
    ref = summary[summary.method == "ref"]
    assert ref["verdict"].isna().all()  # the reference is not compared with itself
