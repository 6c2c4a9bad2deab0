"""Rendered sweep tables (multimoe/bench/render.py): means, paired marks and the primary metric, on cells whose
numbers were chosen by hand (binary tasks are read by AUC, multiclass ones by accuracy)."""

import json

import pandas as pd
import pytest

from multimoe.bench import append_cell, render
from multimoe.bench.render import (
    combination_frame,
    combination_tables,
    file_name,
    load_frame,
    markdown_paired,
    markdown_per_size,
    missing_rate_curves,
    point_label,
    summary_table,
    worst_groups,
)
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
    rows = table_rows(text.split("## Paired differences")[0])
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


def test_skipped_cells_are_counted_apart_with_their_reason(tmp_path, rendered):
    # the store holds all 18 cells; the sweep file now skips the 3 of "bad" on mfeat: 15 planned, all finished, and
    # the 3 stored anyway stay in the tables
    sweep = sweep_of(tmp_path)
    sweep.skip = [{"methods": ["bad"], "where": {"data.name": "mfeat"}, "reason": "cut for time"}]
    text = render(sweep, tmp_path).read_text()
    assert (
        "Cells finished: 15 of 15 planned (3 methods x 2 grid points x 3 seeds, less 3 skipped by the sweep file: "
        "cut for time (3 cells); 3 of them finished anyway and are in the tables)"
    ) in text
    assert any(line.startswith("| bad | 0.723 ± 0.025 ▼ | 0.910 ± 0.017 ≈ |") for line in text.splitlines())
    assert json.loads((tmp_path / "marks" / "summary.json").read_text()) == {"cells": 15, "expected": 15}


def test_readme_text_compute_table_and_files(rendered):
    text, _, out = rendered
    assert text.startswith("# Sweep `marks`\n\nHand-made cells.\n\nMade by: `multimoe bench marks.yaml`")
    assert "Cells finished: 18 of 18 planned (3 methods x 2 grid points x 3 seeds)" in text
    assert "What is held equal: nothing" in text and "Marks against `ref`" in text
    rows = table_rows(text)
    assert rows["dataset"] == ["method", "parameters", "active parameters", "MFLOPs / sample",
                               "train MFLOPs / sample", "train s (median)", "epochs"]  # fmt: skip
    compute = [line for line in text.splitlines() if line.startswith("| mfeat | good |")]
    assert compute == ["| mfeat | good | 1,234,567 | 5 | 2.50 | 2.50 | 4 | 4 |"]  # median of 3, 4, 5 seconds
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
    combos = pd.concat([combos.assign(point="q"), combos])  # point q first: tables follow the frame's point order
    tables = combination_tables(combos, sweep)
    assert list(tables) == ["q", "p"]
    table = tables["p"]
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
        + [{"dataset": "a", "missing": "mcar:0.3", "method": "ref", "classes": 2, "seed": 0, "accuracy": 1, "auc": 1}]
        + [
            {
                "dataset": "e",
                "missing": f"mcar:{r}",
                "method": "ref",
                "classes": 2,
                "seed": 0,
                "accuracy": 1 - r,
                "auc": r,
            }
            for r in (0.1, 0.2)
        ]  # fmt: skip
    )
    curves = missing_rate_curves(frame, sweep)
    assert set(curves.dataset) == {"d", "e"}  # a dataset with one rate (a) draws no curve
    binary = curves[curves.dataset == "e"]
    assert list(binary.metric) == ["auc", "auc"] and list(binary["mean"]) == [0.1, 0.2]  # binary: AUC
    curves = curves[curves.dataset == "d"]
    assert list(curves.method) == ["ref", "ref", "good", "good"]  # the sweep's method order
    row = curves[(curves.method == "good") & (curves.rate == 0.5)].iloc[0]
    assert row["mean"] == pytest.approx(1.1) and row["metric"] == "accuracy"  # 0.5 + 0.5 + (0, .1, .2) mean .1
    half = 4.302653 * 0.1 / 3**0.5  # std 0.1 over 3 seeds, t(0.975, 2)
    assert row["ci_low"] == pytest.approx(1.1 - half) and row["ci_high"] == pytest.approx(1.1 + half)
    one = missing_rate_curves(frame[frame.seed == 0], sweep)
    assert (one.ci_low == one["mean"]).all() and (one.ci_high == one["mean"]).all()  # one seed: no interval
    frame["complete"] = frame.method == "good"  # scored on each rate's complete samples: not on the curve
    assert set(missing_rate_curves(frame, sweep)[lambda c: c.dataset == "d"].method) == {"ref"}


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


def test_paired_difference_table_by_hand(rendered):
    text, _, _ = rendered
    section = text.split("## Paired differences from `ref` (primary metric, 95 % t interval)\n\n")[1].split("\n\n")[0]
    rows = table_rows(section)
    assert rows["method"] == ["support2 natural", "mfeat mcar:0.3"]
    assert "ref" not in rows  # the reference is not compared with itself
    # binary AUC, good - ref: 0.05, 0.04, 0.07 -> +0.0533, half-width 4.302653 * 0.015275 / sqrt(3) = 0.0379
    assert rows["good"][0] == "+0.053 [+0.015, +0.091] (3 seeds)"
    # binary AUC, bad - ref: -0.10, -0.07, -0.09 -> -0.0867 with the same spread
    assert rows["bad"][0] == "-0.087 [-0.125, -0.049] (3 seeds)"
    # multiclass accuracy, good - ref: 0.05, 0.04, 0.06 -> +0.05, std 0.01, half-width 0.0248
    assert rows["good"][1] == "+0.050 [+0.025, +0.075] (3 seeds)"
    assert text.split("## Paired differences")[1].split("## Compute")[0].endswith(" (3 seeds) |\n\n")


def test_whole_readme_of_a_sweep_without_reference_with_gaps(tmp_path):
    """Every line of README.md, worked out by hand: no reference (no marks, no paired table), two MCAR rates of one
    dataset (a curve) and an extra override, a method with one seed (no ±), one run at the second point only, one
    never run, a cell without FLOPs, per-combination results in one cell, three logged sessions (the last line of
    each counts)."""
    low, high = {"data.name": "x", "data.missing": "mcar:0.1"}, {"data.name": "x", "data.missing": "mcar:0.5",
                                                                 "train.lr": 0.1}  # fmt: skip
    sweep = Sweep(name="gaps", methods={m: {"preset": "-", "overrides": {}} for m in ("a", "b", "c", "d")},
                  grid=[low, high], seeds=[0, 1], description="Gaps.")  # fmt: skip
    done = [("a", low, 0, 0.80, 10, 3, 10, 10_005_001), ("a", low, 1, 0.90, 20, 5, 40, 30_000_000),
            ("a", high, 0, 0.60, 60, 7, 16, 12_000_000), ("b", low, 0, 0.70, 5, 2, 10, None),
            ("c", high, 0, 0.55, 8, 1, 10, 10_005_001)]  # fmt: skip
    cells = {(c["method"], json.dumps(c["point"]), c["seed"]): c for c in sweep.cells()}
    combos = [{"combination": "a", "index": 1, "size": 1, "n": 5, "accuracy": 0.4, "auc": 0.5, "f1": 0.4}]
    for method, point, seed, acc, seconds, epochs, parameters, flops in done:
        cell = cells[method, json.dumps(point), seed]
        append_cell(tmp_path / "cells.jsonl", {**cell, "status": "ok", "dataset": "x", "classes": 10,
                    "test": {"n": 10, "accuracy": acc, "f1": acc, "auc": 0.9}, "parameters": parameters,
                    "active_parameters": 4, "flops_per_sample": flops,
                    "train_flops_per_sample": 70_035_007 if method == "c" else None,
                    "train_seconds": seconds, "epochs_run": epochs, "best_epoch": 1,
                    "combinations": combos if method == "c" else None,
                    "test_per_size": [{"size": 1, "n": 4, "accuracy": acc - 0.3}] if method == "a" and point is low
                    else None})  # fmt: skip
    (tmp_path / "gaps").mkdir()
    sessions = [{"started": 1, "seconds": 30, "jobs": 2}, {"started": 1, "seconds": 200, "jobs": 2},
                {"started": 2, "seconds": 100, "jobs": 1}, {"started": 3, "seconds": 300, "jobs": 4}]  # fmt: skip
    (tmp_path / "gaps" / "sessions.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sessions))
    readme = render(sweep, tmp_path, command="multimoe bench gaps.yaml")
    assert readme == tmp_path / "gaps" / "README.md"
    text = readme.read_text()
    assert text == (
        "# Sweep `gaps`\n\nGaps.\n\nMade by: `multimoe bench gaps.yaml`\n\n"
        # 5 of 4 x 2 x 2 cells; sessions 200 s + 100 s + 300 s = 10.0 min, the last session's 4 workers
        "Cells finished: 5 of 16 planned (4 methods x 2 grid points x 2 seeds); wall time of the sweep's sessions: "
        "10.0 min (3 session(s), 4 workers).\n\n"
        "## Test results (mean ± std over seeds)\n\n"
        "| method | x mcar:0.1 (accuracy) | x mcar:0.5 (train.lr=0.1) (accuracy) |\n"
        "| --- | --- | --- |\n"
        "| a | 0.850 ± 0.071 | 0.600 |\n"  # 0.80, 0.90: std 0.1 / sqrt(2); one seed: no ±
        "| b | 0.700 | – |\n"
        "| c | – | 0.550 |\n\n"  # d never ran: no row
        "## By number of observed modalities (test split, mean over seeds)\n\n"
        "x mcar:0.1 (accuracy):\n\n"  # the one point whose cells stored per-size results
        "| method | 1 (8 rows) |\n"
        "| --- | --- |\n"
        "| a | 0.550 |\n\n"  # (0.5 + 0.6) / 2, 4 rows in each of two seeds
        "## Compute\n\n"
        "| dataset | method | parameters | active parameters | MFLOPs / sample | train MFLOPs / sample | "
        "train s (median) | epochs |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        # medians of 10, 40, 16 parameters, 10.005001, 30 and 12 MFLOPs, 10, 20, 60 s and 3, 5, 7 epochs (a fitted
        # model's size varies with its split); no training figure: the inference one
        "| x | a | 16 | 4 | 12.00 | 12.00 | 20 | 5 |\n"
        "| x | b | 10 | 4 | – | – | 5 | 2 |\n"
        "| x | c | 10 | 4 | 10.01 | 70.04 | 8 | 1 |\n\n"  # 7 forwards per training sample: 70.035007
        "## Plots\n\n"
        "![x-missing-rate](plots/x-missing-rate.png)\n"  # two MCAR rates of x: a curve
        "![x_mcar0.5_(train.lr=0.1)-combinations](plots/x_mcar0.5_(train.lr=0.1)-combinations.png)\n\n"
        "Full statistics (every metric, 95 % CIs, paired differences and p-values): `summary.csv`; per-combination "
        "results: `combinations.csv`; raw per-cell records (every sweep's): `../cells.jsonl`.\n"
    )
    assert render(sweep, tmp_path).read_text() == text.replace("Made by: `multimoe bench gaps.yaml`\n\n", "")
    header, first = (tmp_path / "gaps" / "summary.csv").read_text().splitlines()[:2]
    assert header.startswith("point,method,metric,n,mean,std,") and first.startswith("x mcar:0.1,a,accuracy,2,0.85000,")
    assert json.loads((tmp_path / "gaps" / "summary.json").read_text()) == {"cells": 5, "expected": 16}
    assert (tmp_path / "gaps" / "combinations.csv").read_text().splitlines() == [
        "point,method,index,combination,size,metric,mean,std,count",
        "x mcar:0.5 (train.lr=0.1),c,1,a,1,accuracy,0.40000,,1",  # one seed: no std
    ]


def test_readme_without_per_combination_results(tmp_path):
    sweep = Sweep(name="plain", methods={"a": {"preset": "-", "overrides": {}}}, grid=[{"data.name": "x"}], seeds=[0])
    append_cell(tmp_path / "cells.jsonl", {**sweep.cells()[0], "status": "ok", "dataset": "x", "classes": 10,
                "test": {"accuracy": 0.5}, "parameters": 1, "active_parameters": 1, "flops_per_sample": 1.0,
                "train_seconds": 1.0, "epochs_run": 1})  # fmt: skip
    text = render(sweep, tmp_path).read_text()
    assert text.endswith(
        "## Plots\n\nFull statistics (every metric, 95 % CIs, paired differences and p-values): `summary.csv`; raw "
        "per-cell records (every sweep's): `../cells.jsonl`.\n"
    )
    assert not (tmp_path / "plain" / "combinations.csv").exists()


def test_paired_table_with_one_two_and_three_pairs_and_gaps():
    sweep = Sweep(name="p", methods={m: {"preset": "-", "overrides": {}} for m in ("ref", "m1", "m2", "m3")},
                  grid=[], seeds=[0, 1, 2], reference="ref")  # fmt: skip
    runs = {  # (method, point): accuracy per seed (None: not run)
        ("ref", "p"): [0.50, 0.60, 0.70], ("m1", "p"): [0.60, 0.70, 0.90],  # +0.10, +0.10, +0.20
        ("m2", "p"): [0.55, 0.70, None], ("m2", "q"): [0.9, None, None],  # +0.05, +0.10; no reference at q
        ("m3", "q"): [0.5, 0.5, None],
    }  # fmt: skip
    rows = [{"point": p, "method": m, "seed": s, "classes": 10, "accuracy": v, "f1": v, "auc": v, "brier": None,
             "ece": None}
            for (m, p), values in runs.items() for s, v in enumerate(values) if v is not None]  # fmt: skip
    text = markdown_paired(summary_table(pd.DataFrame(rows), sweep), sweep)
    # m1: mean +0.1333, std 0.0577, half-width 4.302653 * 0.0577 / sqrt(3) = 0.1434; m2: mean +0.075, std 0.0354,
    # half-width 12.7062 * 0.0354 / sqrt(2) = 0.3177
    assert text == (
        "| method | p | q |\n"
        "| --- | --- | --- |\n"
        "| m1 | +0.133 [-0.010, +0.277] (3 seeds) | – |\n"
        "| m2 | +0.075 [-0.243, +0.393] (2 seeds) | – |\n"
        "| m3 | – | – |"
    )
    one = summary_table(pd.DataFrame([r for r in rows if not (r["method"] == "m2" and r["seed"] == 1)]), sweep)
    assert "| m2 | +0.050 (1 seed) | – |" in markdown_paired(one, sweep)  # one pair: no interval


def test_readme_head_with_a_reference_line_by_line(rendered):
    text, _, _ = rendered
    head = text.split("## Test results (mean ± std over seeds)\n\n")[1].split("\n\n")[0]
    assert head == (
        "Marks against `ref` (paired over seeds, 95 % t interval of the difference): ▲ better beyond noise, ▼ worse "
        "beyond noise, ≈ within noise. No multiple-comparison correction."
    )
    assert text.split("\n\n")[:5] == [
        "# Sweep `marks`",
        "Hand-made cells.",
        "Made by: `multimoe bench marks.yaml`",
        "Cells finished: 18 of 18 planned (3 methods x 2 grid points x 3 seeds); wall time of the sweep's sessions: "
        "0.0 min (0 session(s), ? workers).",  # no sessions.jsonl
        "What is held equal: nothing",
    ]
    assert text.endswith(
        "## Plots\n\n![mfeat_mcar0.3-combinations](plots/mfeat_mcar0.3-combinations.png)\n\n"
        "Full statistics (every metric, 95 % CIs, paired differences and p-values): `summary.csv`; per-combination "
        "results: `combinations.csv`; raw per-cell records (every sweep's): `../cells.jsonl`.\n"
    )


def test_point_labels():
    assert point_label({"data.name": "x", "data.missing": "mcar:0.1"}) == "x mcar:0.1"
    assert point_label({"data.missing": "mcar:0.1"}) == "mcar:0.1"  # no dataset named: nothing in its place
    assert point_label({"data.name": "x"}) == "x"
    assert point_label({"train.lr": 0.1, "data.name": "x", "model.dim": 8}) == "x (model.dim=8, train.lr=0.1)"
    # a table of one's own is named by its spec file; a plot's file name holds no path separator
    spec = {"data.spec": "external/framingham.yaml", "data.missing": "mcar:0.3", "train.lr": 0.1}
    assert point_label(spec) == "framingham mcar:0.3 (train.lr=0.1)"
    assert file_name("a mcar:0.3 (data.spec=x/y.yaml, seed=1)") == "a_mcar0.3_(data.spec=x_y.yaml,_seed=1)"


def test_frame_rows_skip_foreign_and_failed_cells_and_fill_defaults(tmp_path):
    sweep = Sweep(name="f", methods={"a": {"preset": "-", "overrides": {}}}, grid=[{"data.name": "x"}], seeds=[0, 1])
    first, second = sweep.cells()
    append_cell(tmp_path / "cells.jsonl", {"key": "another sweep's", "status": "ok"})  # before this sweep's cells
    append_cell(tmp_path / "cells.jsonl", {**first, "status": "error", "error": "boom"})
    base = {"status": "ok", "dataset": "x", "test": {"accuracy": 0.5}, "train_seconds": 2.0, "best_epoch": 3}
    append_cell(tmp_path / "cells.jsonl", {**first, **base})  # a cell stored without its class count
    append_cell(tmp_path / "cells.jsonl", {**second, **base, "classes": 2, "best_epoch": 7})
    frame = load_frame(sweep, tmp_path)
    assert list(frame.seed) == [0, 1]
    assert list(frame.missing) == ["natural", "natural"]  # no data.missing in the point
    sweep.grid = [{"data.name": "x", "data.missing": "mcar:0.3"}]
    append_cell(tmp_path / "cells.jsonl", {**sweep.cells()[0], **base})
    assert list(load_frame(sweep, tmp_path).missing) == ["mcar:0.3"]
    assert list(frame.classes) == [0, 2] and list(frame.best_epoch) == [3, 7]
    assert frame.f1.isna().all() and list(frame.train_seconds) == [2.0, 2.0]


def test_combination_frame_reads_the_primary_metric_per_cell(tmp_path):
    combos = [{"combination": "a", "index": 1, "size": 1, "n": 4, "accuracy": 0.25, "auc": 0.75, "f1": 0.2}]
    frame = pd.DataFrame([{"point": "p", "method": "m", "seed": s, "classes": k, "record": {"combinations": combos}}
                          for s, k in ((3, 2), (4, 10))] + [{"point": "p", "method": "m", "seed": 5, "classes": 10,
                          "record": {}}])  # fmt: skip
    rows = combination_frame(frame).to_dict("records")
    common = {"point": "p", "method": "m", "combination": "a", "index": 1, "size": 1, "n": 4}
    assert rows == [{**common, "seed": 3, "metric": "auc", "value": 0.75},  # binary: AUC
                    {**common, "seed": 4, "metric": "accuracy", "value": 0.25}]  # fmt: skip


def test_pairs_leave_out_seeds_where_either_side_is_undefined(tmp_path):
    sweep = sweep_of(tmp_path)
    rows = []
    for method, aucs in (("ref", (0.80, 0.82, None, 0.81)), ("good", (0.85, None, 0.90, 0.86))):
        for seed, auc in enumerate(aucs):
            rows.append({"point": "p", "method": method, "seed": seed, "classes": 2, "accuracy": 0.5, "f1": 0.5,
                         "auc": auc, "brier": None, "ece": None})  # fmt: skip
    good = summary_table(pd.DataFrame(rows), sweep)
    good = good[(good.method == "good") & (good.metric == "auc")].iloc[0]
    assert good["pairs"] == 2 and good["diff"] == pytest.approx(0.05)  # seeds 0 and 3: +0.05, +0.05
    assert good["n"] == 3 and good["mean"] == pytest.approx(2.61 / 3)  # its own mean over its 3 defined seeds


def test_per_size_table_by_hand():
    sweep = Sweep(name="s", methods={m: {"preset": "-", "overrides": {}} for m in ("a", "b")}, grid=[], seeds=[0, 1])
    per_size = {  # (method, seed): per-size test results
        ("a", 0): [{"size": 2, "n": 3, "accuracy": 0.1, "auc": 0.8}, {"size": 1, "n": 2, "accuracy": 0.1, "auc": 0.5}],
        ("a", 1): [{"size": 2, "n": 3, "accuracy": 0.1, "auc": 0.9}, {"size": 1, "n": 2, "accuracy": 0.1, "auc": 0.7}],
        ("b", 0): [{"size": 2, "n": 3, "accuracy": 0.1, "auc": 0.6}],
    }
    frame = pd.DataFrame(
        [{"point": "p", "method": m, "seed": s, "classes": 2, "record": {"test_per_size": v}}
         for (m, s), v in per_size.items()]
    )  # fmt: skip
    block = (
        "p (auc):\n\n"  # binary: AUC; sizes ascending; rows summed over a's two seeds
        "| method | 1 (4 rows) | 2 (6 rows) |\n"
        "| --- | --- | --- |\n"
        "| a | 0.600 | 0.850 |\n"  # (0.5 + 0.7) / 2, (0.8 + 0.9) / 2
        "| b | – | 0.600 |"
    )
    assert markdown_per_size(frame, sweep) == block
    empty = pd.DataFrame([{"point": "q", "method": "a", "seed": 0, "classes": 2, "record": {}}])  # stored before
    z = frame.assign(point="z", classes=10)  # per-size results were kept; accuracy 0.1 everywhere
    blocks = markdown_per_size(pd.concat([empty, z, frame]), sweep).split("\n\n")  # points in the frame's order
    assert blocks[0] == "z (accuracy):" and blocks[2] == block.split("\n\n")[0] and len(blocks) == 4
    assert markdown_per_size(empty, sweep) == ""


def test_a_complete_case_method_is_paired_with_the_reference_on_its_own_test_samples(tmp_path):
    """A method trained and tested on complete samples only (data.complete_cases, as I2MoE is published) is compared
    with the reference's accuracy on the test samples with every modality (its per-size group of size M, same rows),
    not with the reference's whole test split; a group of another size is not a pair; the table marks it with †."""
    sweep = Sweep(name="cc", methods={m: {"preset": "-", "overrides": {}} for m in ("ref", "cc")}, grid=[MULTI],
                  seeds=SEEDS, reference="ref", complete_cases={("cc", 0)})  # fmt: skip
    ref_full, ref_complete, ref_n = [0.80, 0.81, 0.82], [0.90, 0.92, 0.94], [10, 10, 11]  # seed 2: not the same rows
    mine = [0.95, 0.96, 0.99]
    for cell in sweep.cells():
        s = cell["seed"]
        if cell["method"] == "ref":
            test = {"n": 40, "accuracy": ref_full[s]}
            per_size = [{"size": 2, "n": ref_n[s], "accuracy": ref_complete[s]},
                        {"size": 1, "n": 40 - ref_n[s], "accuracy": 0.7}]  # fmt: skip
        else:
            test, per_size = {"n": 10, "accuracy": mine[s]}, [{"size": 2, "n": 10, "accuracy": mine[s]}]
        append_cell(tmp_path / "cells.jsonl", {**cell, "status": "ok", "dataset": "mfeat", "classes": 10,
                    "test": test, "test_per_size": per_size, "parameters": 10, "active_parameters": 10,
                    "flops_per_sample": 1e6, "train_seconds": 1.0, "epochs_run": 1, "best_epoch": 1})  # fmt: skip
    summary = summary_table(load_frame(sweep, tmp_path), sweep)
    row = summary[(summary.method == "cc") & (summary.metric == "accuracy")].iloc[0]
    assert row["pairs"] == 2 and row["scope"] == "complete"
    assert row["diff"] == pytest.approx(((0.95 - 0.90) + (0.96 - 0.92)) / 2)  # not 0.95 - 0.80 and so on
    readme = render(sweep, tmp_path).read_text()
    assert "| cc | 0.967 ± 0.021 ≈ † |" in readme and "†: trained and tested on complete samples only" in readme
    # differences 0.05 and 0.04: mean 0.045, sd 0.00707, t(1) 12.706 -> half-width 0.0635
    assert "+0.045 [-0.019, +0.109] (2 seeds) †" in readme


def test_worst_combination_table_by_hand(tmp_path):
    """Per seed the lowest-scoring combination with at least 10 test rows (a smaller one is left out, however low;
    equal values: the first in published order), its mean over seeds, the combination worst in most seeds, and the
    paired difference from the reference's own worst combination."""
    sweep = Sweep(name="worst", methods={m: {"preset": "-", "overrides": {}} for m in ("ref", "good", "bad")},
                  grid=[MULTI], seeds=SEEDS, reference="ref")  # fmt: skip
    # per method, per seed: accuracy on combination a+b (20 rows), a (12 rows); b (5 rows) always scores 0.1
    values = {
        "ref": [(0.90, 0.60), (0.90, 0.62), (0.90, 0.64)],  # worst: a
        "good": [(0.85, 0.90), (0.86, 0.90), (0.87, 0.90)],  # worst: a+b
        "bad": [(0.50, 0.50), (0.60, 0.55), (0.60, 0.55)],  # seed 0: a tie, a+b comes first; then a
    }
    for cell in sweep.cells():
        ab, a = values[cell["method"]][cell["seed"]]
        groups = [
            {"combination": "a+b", "index": 0, "size": 2, "n": 20, "accuracy": ab, "auc": None},
            {"combination": "a", "index": 1, "size": 1, "n": 12, "accuracy": a, "auc": None},
            {"combination": "b", "index": 2, "size": 1, "n": 5, "accuracy": 0.1, "auc": None},
        ]
        append_cell(tmp_path / "cells.jsonl", {**cell, "status": "ok", "dataset": "mfeat", "classes": 10,
                    "test": {"n": 37, "accuracy": 0.8}, "test_per_combination": groups, "parameters": 1,
                    "active_parameters": 1, "flops_per_sample": 1e6, "train_seconds": 1.0, "epochs_run": 1,
                    "best_epoch": 1})  # fmt: skip
    worst = worst_groups(load_frame(sweep, tmp_path))
    assert worst[worst.method == "bad"].combination.tolist() == ["a+b", "a", "a"]
    readme = render(sweep, tmp_path).read_text()
    assert "## Worst modality combination (test split, combinations with at least 10 rows)" in readme
    rows = table_rows(readme.split("## Worst modality combination")[1])
    assert rows["ref"] == ["0.620 ± 0.020", "a (3 of 3)", "–"]
    # differences 0.25, 0.24, 0.23: mean 0.24, sd 0.01, t(2) 4.303 -> half-width 0.0248
    assert rows["good"] == ["0.860 ± 0.010", "a+b (3 of 3)", "+0.240 [+0.215, +0.265] ▲"]
    # values 0.50, 0.55, 0.55 (mean 0.5333, sd 0.0289); differences -0.10, -0.07, -0.09: mean -0.0867, sd 0.0153,
    # half-width 0.0379
    assert rows["bad"] == ["0.533 ± 0.029", "a (2 of 3)", "-0.087 [-0.125, -0.049] ▼"]


def test_worst_combination_leaves_out_undefined_metrics():
    """On a binary task the AUC of a one-class combination is undefined (None): it is never the worst group; a cell
    whose every combination is undefined or small has no worst group."""

    def cell(groups):
        return {"method": "m", "point": "p", "seed": 0, "classes": 2, "complete": False,
                "record": {"test_per_combination": groups}}  # fmt: skip

    frame = pd.DataFrame([
        cell([{"combination": "a", "index": 0, "n": 30, "auc": None}, {"combination": "b", "index": 1, "n": 30,
              "auc": 0.7}]),
        cell([{"combination": "a", "index": 0, "n": 30, "auc": None}, {"combination": "b", "index": 1, "n": 9,
              "auc": 0.2}]),
    ])  # fmt: skip
    worst = worst_groups(frame)
    assert worst[["combination", "metric", "value"]].values.tolist() == [["b", "auc", 0.7]]


def test_tables_follow_the_sweep_order_not_the_store_order(tmp_path):
    """Cells finish in any order (and other sweeps share the store): the tables list grid points, then methods, as
    the sweep file does."""
    sweep = Sweep(name="order", methods={m: {"preset": "-", "overrides": {}} for m in ("ref", "other")},
                  grid=[MULTI, BINARY], seeds=[0], reference="ref")  # fmt: skip
    for cell in reversed(sweep.cells()):  # the last grid point's cells first, "other" before "ref"
        append_cell(tmp_path / "cells.jsonl", {**cell, "status": "ok", "dataset": cell["point"]["data.name"],
                    "classes": 10 if cell["point"] is MULTI else 2, "test": {"n": 10, "accuracy": 0.5, "auc": 0.5},
                    "parameters": 1, "active_parameters": 1, "flops_per_sample": 1e6, "train_seconds": 1.0,
                    "epochs_run": 1, "best_epoch": 1})  # fmt: skip
    frame = load_frame(sweep, tmp_path)
    assert list(zip(frame.point, frame.method)) == [
        ("mfeat mcar:0.3", "ref"), ("mfeat mcar:0.3", "other"), ("support2 natural", "ref"),
        ("support2 natural", "other"),
    ]  # fmt: skip
    readme = render(sweep, tmp_path).read_text()
    assert "| method | mfeat mcar:0.3 (accuracy) | support2 natural (auc) |" in readme
