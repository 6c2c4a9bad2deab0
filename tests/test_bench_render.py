"""Rendered sweep tables (multimoe/bench/render.py): means, paired marks and the primary metric, on cells whose
numbers were chosen by hand (binary tasks are read by AUC, multiclass ones by accuracy)."""

import json

import pandas as pd
import pytest

from multimoe.bench import append_cell, render
from multimoe.bench.render import combination_tables, missing_rate_curves, summary_table
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


# per-combination protocol on the multiclass point: (combination, index, size) -> per-method value of seed s: base + s
COMBOS = [("a+b", 0, 2), ("a", 1, 1), ("b", 2, 1)]
COMBO_BASE = {"ref": 0.5, "good": 0.7, "bad": 0.1}


def sweep_of(tmp_path) -> Sweep:
    return Sweep(name="marks", methods={m: {"preset": "-", "overrides": {}} for m in ("ref", "good", "bad")},
                 grid=[BINARY, MULTI], seeds=SEEDS, reference="ref", description="Hand-made cells.",
                 budget="nothing")  # fmt: skip


@pytest.fixture
def rendered(tmp_path):
    sweep = sweep_of(tmp_path)
    for cell in sweep.cells():
        which = "binary" if cell["point"] is BINARY else "multi"
        acc, auc = VALUES[which, cell["method"]][cell["seed"]]
        combos = (
            [
                {
                    "combination": c,
                    "index": i,
                    "size": n,
                    "n": 10,
                    "accuracy": COMBO_BASE[cell["method"]] + i / 10 + cell["seed"] / 100,
                    "auc": 0.5,
                    "f1": 0.5,
                }
                for c, i, n in COMBOS
            ]
            if which == "multi"
            else None
        )
        append_cell(tmp_path / "cells.jsonl", {**cell, "status": "ok", "dataset": cell["point"]["data.name"],
                    "classes": 2 if which == "binary" else 10, "test": {"n": 100, "accuracy": acc, "f1": acc,
                    "auc": auc}, "parameters": 1234567, "active_parameters": 5, "flops_per_sample": 2.5e6,
                    "train_seconds": 3.0 + cell["seed"], "epochs_run": 4, "best_epoch": 2,
                    "combinations": combos})  # fmt: skip
    append_cell(tmp_path / "cells.jsonl", {"key": "other-sweep", "status": "ok"})  # ignored: not this sweep's
    append_cell(tmp_path / "cells.jsonl", {**sweep.cells()[0], "status": "error", "error": "x"})  # ignored
    readme = render(sweep, tmp_path, command="multimoe bench marks.yaml")
    return readme.read_text(), pd.read_csv(readme.parent / "summary.csv"), readme.parent


def table_rows(text: str) -> dict[str, list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def test_primary_metric_marks_and_means(rendered):
    text, _, _ = rendered
    rows = table_rows(text)
    assert rows["method"] == ["support2 natural (auc)", "mfeat mcar:0.3 (accuracy)"]
    assert rows["ref"] == ["0.810 ± 0.010", "0.910 ± 0.010"]
    assert rows["good"] == ["0.863 ± 0.015 ▲", "0.960 ± 0.010 ▲"]
    assert rows["bad"] == ["0.723 ± 0.025 ▼", "0.910 ± 0.017 ≈"]


def test_paired_statistics_in_the_summary(rendered):
    _, summary, _ = rendered
    good = summary[(summary.method == "good") & (summary.metric == "auc")].iloc[0]
    # differences 0.05, 0.04, 0.07: mean 0.05333, std 0.015275, 95 % t half-width 4.302653 * 0.015275 / sqrt(3)
    assert good["diff"] == pytest.approx(0.053333, abs=1e-5)
    assert good["diff_low"] == pytest.approx(0.053333 - 0.037946, abs=1e-5)
    assert good["diff_high"] == pytest.approx(0.053333 + 0.037946, abs=1e-5)
    assert good["p"] == pytest.approx(0.02626, abs=2e-4)  # t = 6.047 with 2 degrees of freedom
    assert good["verdict"] == "better" and bool(good["primary"])
    ref = summary[summary.method == "ref"]
    assert ref["verdict"].isna().all()  # the reference is not compared with itself
    assert len(summary) == 2 * 3 * 3  # points x methods x metrics
    acc = summary[(summary.method == "bad") & (summary.metric == "accuracy") & (summary.point == "mfeat mcar:0.3")]
    assert acc.iloc[0]["mean"] == pytest.approx(0.91) and acc.iloc[0]["n"] == 3


def test_readme_text_compute_table_and_files(rendered):
    text, _, out = rendered
    assert text.startswith("# Sweep `marks`\n\nHand-made cells.\n\nMade by: `multimoe bench marks.yaml`")
    assert "Cells finished: 18 of 18 (3 methods x 2 grid points x 3 seeds)" in text
    assert "What is held equal: nothing" in text and "Marks against `ref`" in text
    rows = table_rows(text)
    assert rows["dataset"] == ["method", "parameters", "active parameters", "MFLOPs / sample", "train s (median)",
                               "epochs"]  # fmt: skip
    compute = [line for line in text.splitlines() if line.startswith("| mfeat | good |")]
    assert compute == ["| mfeat | good | 1,234,567 | 5 | 2.50 | 4 | 4 |"]  # median of 3, 4, 5 seconds
    assert text.index("| support2 | ref |") < text.index("| support2 | good |") < text.index("| mfeat | ref |")
    assert "![mfeat_mcar0.3-combinations](plots/mfeat_mcar0.3-combinations.png)" in text
    assert (out / "plots" / "mfeat_mcar0.3-combinations.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "summary.json").read_text()) == {"cells": 18, "expected": 18}
    combos = pd.read_csv(out / "combinations.csv")
    good_a = combos[(combos.method == "good") & (combos.combination == "a")].iloc[0]
    assert good_a["mean"] == pytest.approx(0.81) and good_a["count"] == 3  # 0.7 + 1/10 + seeds 0, .01, .02
    assert good_a["std"] == pytest.approx(0.01) and good_a["metric"] == "accuracy" and good_a["size"] == 1


def test_combination_tables_in_published_order_and_sweep_order():
    sweep = sweep_of(None)
    combos = pd.DataFrame(
        [
            {"point": "p", "method": m, "index": i, "combination": c, "seed": s, "value": COMBO_BASE[m] + i + s}
            for m in ("bad", "good", "ref")
            for c, i, _ in reversed(COMBOS)
            for s in (0, 1)
        ]  # fmt: skip
    )
    table = combination_tables(combos, sweep)["p"]
    assert list(table.columns) == ["ref", "good", "bad"]
    assert list(table.index.get_level_values("combination")) == ["a+b", "a", "b"]
    assert table.loc[(1, "a"), "good"] == pytest.approx(0.7 + 1 + 0.5)  # mean over seeds 0 and 1


def test_missing_rate_curves_by_hand():
    sweep = sweep_of(None)
    frame = pd.DataFrame(
        [
            {
                "dataset": "d",
                "missing": f"mcar:{r}",
                "method": m,
                "classes": 10,
                "seed": s,
                "accuracy": base + r + s / 10,
                "auc": 0.5,
            }
            for m, base in (("good", 0.5), ("ref", 0.3))
            for r in (0.0, 0.5)
            for s in (0, 1, 2)
        ]  # fmt: skip
        + [{"dataset": "e", "missing": "mcar:0.3", "method": "ref", "classes": 2, "seed": 0, "accuracy": 1, "auc": 1}]
    )
    curves = missing_rate_curves(frame, sweep)
    assert set(curves.dataset) == {"d"}  # a dataset with one rate draws no curve
    assert list(curves.method) == ["ref", "ref", "good", "good"]  # the sweep's method order
    row = curves[(curves.method == "good") & (curves.rate == 0.5)].iloc[0]
    assert row["mean"] == pytest.approx(1.1) and row["metric"] == "accuracy"  # 0.5 + 0.5 + (0, .1, .2) mean .1
    half = 4.302653 * 0.1 / 3**0.5  # std 0.1 over 3 seeds, t(0.975, 2)
    assert row["ci_low"] == pytest.approx(1.1 - half) and row["ci_high"] == pytest.approx(1.1 + half)
    one = missing_rate_curves(frame[frame.seed == 0], sweep)
    assert (one.ci_low == one["mean"]).all() and (one.ci_high == one["mean"]).all()  # one seed: no interval


def test_calibration_rows_compare_lower_as_better_and_old_cells_have_none(tmp_path):
    sweep = sweep_of(tmp_path)
    rows = []
    for method, brier in (("ref", (0.30, 0.32, 0.31)), ("good", (0.20, 0.21, 0.23)), ("bad", (None, None, None))):
        for seed, b in zip(SEEDS, brier):
            rows.append({"point": "p", "method": method, "seed": seed, "classes": 10, "accuracy": 0.9, "f1": 0.9,
                         "auc": 0.99, "brier": b, "ece": None if b is None else b / 10})  # fmt: skip
    summary = summary_table(pd.DataFrame(rows), sweep)
    good = summary[(summary.method == "good") & (summary.metric == "brier")].iloc[0]
    assert good["verdict"] == "better" and good["diff"] == pytest.approx(-0.29 / 3)  # -0.10, -0.11, -0.08
    assert good["mean"] == pytest.approx(0.64 / 3) and not good["primary"]
    ece = summary[(summary.method == "good") & (summary.metric == "ece")].iloc[0]
    assert ece["verdict"] == "better" and ece["diff"] == pytest.approx(-0.029 / 3)
    assert set(summary[summary.method == "bad"].metric) == {"accuracy", "f1", "auc"}  # cells without calibration
