"""Benchmark results a person can read: tables (statistics from ``stats.py``) and plots, per sweep."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from multimoe.bench.stats import MARK, mean_ci, paired, primary_metric
from multimoe.bench.store import read_cells, read_sessions
from multimoe.bench.sweep import Sweep


def point_label(point: dict) -> str:
    """``<dataset> <protocol> (<other overrides>)``, each part only where the point sets it; a table of one's own
    (``data.spec``) is named by its spec file's name without the suffix."""
    point = dict(point)
    if "data.spec" in point and "data.name" not in point:
        point["data.name"] = Path(str(point.pop("data.spec"))).stem
    named = [str(point[k]) for k in ("data.name", "data.missing") if k in point]
    rest = ", ".join(f"{k}={v}" for k, v in sorted(point.items()) if k not in ("data.name", "data.missing"))
    return " ".join(named + ([f"({rest})"] if rest else []))


def file_name(label: str) -> str:
    """A grid point's label as a file name: ':' dropped, every character but letters, digits and ``.=,()_-`` (a
    space, a path's slash) replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9.=,()_-]", "_", label.replace(":", ""))


METRICS = ("accuracy", "f1", "auc", "brier", "ece")
LOWER_BETTER = ("brier", "ece")  # calibration: 0 is perfect
COMPLETE_MARK = " †"
COMPLETE_NOTE = (
    "†: trained and tested on complete samples only (data.complete_cases, as published): its score is on the "
    "test samples that have every modality, and its paired comparison is with the reference on those same samples."
)


def load_frame(sweep: Sweep, results_dir: Path) -> pd.DataFrame:
    """One row per finished cell of the sweep (other sweeps' cells in the store are ignored), in the sweep's order:
    grid point, then method, then seed (the store holds them in the order they finished, which other sweeps and
    restarts interleave), so that every table lists the grid points as the sweep file does."""
    keys = {c["key"] for c in sweep.cells()}
    rows = []
    for c in read_cells(Path(results_dir) / "cells.jsonl"):
        if c.get("status") != "ok" or c["key"] not in keys:
            continue
        rows.append(
            {
                "key": c["key"],
                "method": c["method"],
                "point": point_label(c["point"]),
                "complete": (c["method"], sweep.grid.index(c["point"])) in sweep.complete_cases,
                "dataset": c["dataset"],
                "missing": c["point"].get("data.missing", "natural"),
                "seed": c["seed"],
                "classes": c.get("classes", 0),
                **{m: c["test"].get(m) for m in METRICS},  # brier, ece: None in cells stored before them
                **{
                    k: c.get(k)
                    for k in (
                        "parameters",
                        "active_parameters",
                        "flops_per_sample",
                        "train_flops_per_sample",
                        "train_seconds",
                        "epochs_run",
                        "best_epoch",
                    )
                },  # fmt: skip
                "record": c,
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    order = {m: i for i, m in enumerate(sweep.methods)}
    rank = [(sweep.grid.index(r.record["point"]), order[r.method], r.seed) for r in frame.itertuples()]
    return frame.iloc[sorted(range(len(frame)), key=rank.__getitem__)].reset_index(drop=True)


def summary_table(frame: pd.DataFrame, sweep: Sweep) -> pd.DataFrame:
    """Long table: per (point, method, metric) the statistics over seeds and the paired comparison."""
    out = []
    for (point, method), g in frame.groupby(["point", "method"], sort=False):
        ref = frame[(frame.point == point) & (frame.method == sweep.reference)] if sweep.reference else None
        for metric in METRICS:
            if g[metric].isna().all():  # calibration of cells stored before it was measured
                continue
            row = {"point": point, "method": method, "metric": metric, **mean_ci(g[metric])}
            row["primary"] = metric == primary_metric(int(g["classes"].iloc[0]))
            if ref is not None and len(ref) and method != sweep.reference:
                mine = dict(zip(g.seed, g[metric]))
                if _complete(g) and not _complete(ref):  # the reference on the same (complete) samples
                    row["scope"] = "complete"
                    theirs = {s: _on_own_samples(r, mine_r, metric) for s, r, mine_r in _seed_pairs(g, ref)}
                else:
                    theirs = dict(zip(ref.seed, ref[metric]))
                known = {s for s in mine if s in theirs and not pd.isna(mine[s]) and not pd.isna(theirs[s])}
                row.update(paired({s: mine[s] for s in known}, {s: theirs[s] for s in known}, metric in LOWER_BETTER))
            out.append(row)
    return pd.DataFrame(out)


def _complete(cells: pd.DataFrame) -> bool:
    """Whether these cells (one method, one point) trained and tested on complete samples only."""
    return "complete" in cells and bool(cells.complete.iloc[0])


def _seed_pairs(g: pd.DataFrame, ref: pd.DataFrame):
    """(seed, reference record, method record) for the seeds both finished."""
    theirs = dict(zip(ref.seed, ref.record))
    return [(s, theirs[s], r) for s, r in zip(g.seed, g.record) if s in theirs]


def _on_own_samples(ref_record: dict, record: dict, metric: str) -> float:
    """The reference's ``metric`` on the test samples of a method trained and tested on complete samples only: its
    test group with every modality observed (the same rows: same split, same mask). NaN when that group is absent or
    holds another number of rows, or the metric was not measured on it."""
    sizes = [e["size"] for e in record.get("test_per_size") or []]
    group = [e for e in ref_record.get("test_per_size") or [] if sizes and e["size"] == max(sizes)]
    if len(group) != 1 or group[0]["n"] != record["test"]["n"] or group[0].get(metric) is None:
        return float("nan")
    return group[0][metric]


def _fmt(mean: float, std) -> str:
    """A mean over seeds (never missing: a metric without values has no summary row) and its std (none: one seed)."""
    return f"{mean:.3f}" if pd.isna(std) else f"{mean:.3f} ± {std:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: a header row, a separator, then the rows (cells already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def markdown_main(summary: pd.DataFrame, sweep: Sweep) -> str:
    """Methods x grid points, primary metric: mean ± std over seeds, marked against the reference."""
    prim = summary[summary.primary]
    points = list(dict.fromkeys(prim.point))
    methods = [m for m in sweep.methods if m in set(prim.method)]
    header = ["method", *(f"{p} ({prim[prim.point == p].metric.iloc[0]})" for p in points)]
    rows = []
    for m in methods:
        cells = []
        for p in points:
            r = prim[(prim.point == p) & (prim.method == m)]
            if not len(r):
                cells.append("–")
                continue
            r = r.iloc[0]
            mark = MARK.get(r.get("verdict"), "")  # the reference, and sweeps without one: no verdict (NaN, absent)
            mark += COMPLETE_MARK if r.get("scope") == "complete" else ""
            cells.append(f"{_fmt(r['mean'], r['std'])} {mark}".strip())
        rows.append([m, *cells])
    return _table(header, rows)


def _difference(diff: float, low: float, high: float, pairs: int) -> str:
    """A mean paired difference with its 95 % interval ("+0.013 [+0.005, +0.022]"); one pair has no interval."""
    return f"{diff:+.3f} [{low:+.3f}, {high:+.3f}]" if pairs > 1 else f"{diff:+.3f}"


def markdown_paired(summary: pd.DataFrame, sweep: Sweep) -> str:
    """Methods x grid points, primary metric: each method's mean paired difference from the reference over the seeds
    both finished, with its 95 % t interval and the number of pairs (an attribution table when each method changes
    one thing of the reference)."""
    prim = summary[summary.primary & (summary.method != sweep.reference)]
    points = list(dict.fromkeys(summary[summary.primary].point))
    rows = []
    for m in (m for m in sweep.methods if m in set(prim.method)):
        cells = []
        for p in points:
            r = prim[(prim.point == p) & (prim.method == m)]
            pairs = r.iloc[0].get("pairs") if len(r) else None  # no column "pairs" when no method met the reference
            if pd.isna(pairs) or pairs == 0:  # not run there, or no seed in common with the reference
                cells.append("–")
                continue
            r, pairs = r.iloc[0], int(pairs)
            scope = COMPLETE_MARK if r.get("scope") == "complete" else ""
            diff = _difference(r["diff"], r["diff_low"], r["diff_high"], pairs)
            cells.append(f"{diff} ({pairs} seed{'s' if pairs > 1 else ''}){scope}")
        rows.append([m, *cells])
    return _table(["method", *points], rows)


def markdown_per_size(frame: pd.DataFrame, sweep: Sweep) -> str:
    """Per grid point: methods x number of observed modalities (as the test mask leaves them), the primary metric's
    mean over seeds, and the test rows of that size summed over the seeds of the method with the most (a seed's test
    mask is the same for every method; few rows: a noisy mean). Empty when no cell stored its per-size results."""
    blocks = []
    for point, g in frame.groupby("point", sort=False):
        metric = primary_metric(int(g.classes.iloc[0]))
        rows = [
            (r.method, p["size"], p["n"], p[metric])
            for r in g.itertuples()
            for p in r.record.get("test_per_size") or []
        ]
        if not rows:
            continue
        sizes = pd.DataFrame(rows, columns=["method", "size", "n", "value"])
        rows_per_size = sizes.groupby(["method", "size"]).n.sum().groupby("size").max()  # the most seeds' rows
        order = sorted(rows_per_size.index)
        table = []
        for m in (m for m in sweep.methods if m in set(sizes.method)):
            means = sizes[sizes.method == m].groupby("size").value.mean()
            table.append([m, *(_mean_or_dash(means.get(k)) for k in order)])
        header = ["method", *(f"{k} ({rows_per_size[k]} rows)" for k in order)]
        blocks.append(f"{point} ({metric}):\n\n" + _table(header, table))
    return "\n\n".join(blocks)


WORST_MIN_ROWS = 10  # a modality combination enters the worst-group figure with at least this many test rows


def worst_groups(frame: pd.DataFrame) -> pd.DataFrame:
    """Per point, method and seed: the lowest primary metric among the test split's modality combinations (as the
    test mask leaves them) with at least ``WORST_MIN_ROWS`` rows, and which combination it is (the first in the
    published order among equals). Combinations where the metric is undefined (the AUC of a one-class group) are
    left out, and so are complete-case methods (their test split holds one combination)."""
    rows = []
    for r in frame.itertuples():
        metric = primary_metric(int(r.classes))
        if r.complete:
            continue
        groups = [
            g
            for g in r.record.get("test_per_combination") or []
            if g["n"] >= WORST_MIN_ROWS and g.get(metric) is not None
        ]
        if not groups:
            continue
        worst = min(groups, key=lambda g: (g[metric], g["index"]))
        rows.append({"point": r.point, "method": r.method, "seed": r.seed, "metric": metric,
                     "combination": worst["combination"], "n": worst["n"], "value": worst[metric]})  # fmt: skip
    return pd.DataFrame(rows, columns=["point", "method", "seed", "metric", "combination", "n", "value"])


def markdown_worst(worst: pd.DataFrame, sweep: Sweep) -> str:
    """Per grid point: each method's worst-group value (mean ± std over seeds), the combination that is worst in
    most seeds (with how many; among equal counts, the lowest seed's), and the paired difference from the
    reference's worst group over the seeds both have (a seed's test mask is the same for every method, so both
    choose among the same combinations)."""
    blocks = []
    for point, g in worst.groupby("point", sort=False):
        ref = g[g.method == sweep.reference] if sweep.reference else g.iloc[:0]
        header = ["method", f"worst group ({g.metric.iloc[0]})", "worst combination (seeds)"]
        header += [f"difference from {sweep.reference} [95 %]"] if len(ref) else []
        rows = []
        for m in (m for m in sweep.methods if m in set(g.method)):
            h = g[g.method == m]
            s = mean_ci(h.value)
            counts = h.combination.value_counts(sort=False)
            name = counts.idxmax()  # the most frequent; among equal counts the one of the lowest seed
            row = [m, _fmt(s["mean"], s["std"]), f"{name} ({counts[name]} of {len(h)})"]
            if len(ref):
                d = paired(dict(zip(h.seed, h.value)), dict(zip(ref.seed, ref.value)))
                if m == sweep.reference or d["pairs"] == 0:
                    row.append("–")
                else:
                    diff = _difference(d["diff"], d["diff_low"], d["diff_high"], d["pairs"])
                    row.append(f"{diff} {MARK[d['verdict']]}" if d["pairs"] > 1 else f"{diff} (1 seed)")
            rows.append(row)
        blocks.append(f"{point}:\n\n" + _table(header, rows))
    return "\n\n".join(blocks)


def _mean_or_dash(value) -> str:
    return "–" if pd.isna(value) else f"{value:.3f}"


def _mflops(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{value / 1e6:.2f}"


def _median(cells: pd.DataFrame, column: str) -> float:
    """The median of a column over cells, NaN where none has it (None counts as missing)."""
    return pd.to_numeric(cells[column], errors="coerce").median() if column in cells else float("nan")


def markdown_costs(frame: pd.DataFrame, sweep: Sweep) -> str:
    """Per dataset and method, medians over its cells (a fitted model's size varies with its split; a neural
    model's does not): parameters, active parameters, forward MFLOPs per sample at inference and in a training step
    (I2MoE's perturbed forwards, Conf-SMoE's confidence head), training time, epochs. Cells stored before the
    training figure was recorded show the inference one: the two are equal for every model but those two, whose
    cells all have it."""
    lines = ["| dataset | method | parameters | active parameters | MFLOPs / sample | train MFLOPs / sample | "
             "train s (median) | epochs |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    grid = {d: i for i, d in enumerate(dict.fromkeys(frame.dataset))}  # the grid's order, then the sweep's methods
    order = {m: i for i, m in enumerate(sweep.methods)}
    for (dataset, method), g in sorted(
        frame.groupby(["dataset", "method"]), key=lambda kv: (grid[kv[0][0]], order[kv[0][1]])
    ):
        flops, train = _median(g, "flops_per_sample"), _median(g, "train_flops_per_sample")
        train = flops if pd.isna(train) else train
        lines.append(
            f"| {dataset} | {method} | {_median(g, 'parameters'):,.0f} | {_median(g, 'active_parameters'):,.0f} | "
            f"{_mflops(flops)} | {_mflops(train)} | {g.train_seconds.median():.0f} | {g.epochs_run.median():.0f} |"
        )
    return "\n".join(lines)


def missing_rate_curves(frame: pd.DataFrame, sweep: Sweep) -> pd.DataFrame:
    """Per dataset with at least two MCAR rates, method (sweep order) and rate: the primary metric's mean over seeds
    and its 95 % interval (a single seed: the mean as both bounds). Complete-case methods are left out: their scores
    are on another set of test samples at each rate."""
    rows = []
    mcar = frame[frame.missing.str.startswith("mcar:")]
    if "complete" in mcar:
        mcar = mcar[~mcar.complete.astype(bool)]
    for dataset, g in mcar.groupby("dataset"):
        rate = g.missing.str.split(":").str[1].astype(float)
        if rate.nunique() < 2:
            continue
        metric = primary_metric(int(g.classes.iloc[0]))
        for method in [m for m in sweep.methods if m in set(g.method)]:
            for r, h in g[g.method == method].groupby(rate[g.method == method]):
                s = mean_ci(h[metric])
                low, high = (s["mean"], s["mean"]) if s["ci_low"] is None else (s["ci_low"], s["ci_high"])
                rows.append({"dataset": dataset, "metric": metric, "method": method, "rate": r, "mean": s["mean"],
                             "ci_low": low, "ci_high": high})  # fmt: skip
    return pd.DataFrame(rows, columns=["dataset", "metric", "method", "rate", "mean", "ci_low", "ci_high"])


def plot_missing_rate(curves: pd.DataFrame, reference: str | None, path: Path) -> list[Path]:
    """One figure per dataset of ``missing_rate_curves``: the primary metric vs MCAR rate with 95 % bands."""
    # pragma: no mutate block (drawing only: the numbers are missing_rate_curves', tested by hand)
    written = []
    for dataset, g in curves.groupby("dataset", sort=False):
        metric = g.metric.iloc[0]
        fig = Figure(figsize=(7, 4.5))
        ax = fig.subplots()
        for method, h in g.groupby("method", sort=False):
            (line,) = ax.plot(h.rate, h["mean"], marker="o", label=method, lw=2 if method == reference else 1.3)
            ax.fill_between(h.rate, h.ci_low, h.ci_high, color=line.get_color(), alpha=0.15)
        ax.set_xlabel("MCAR rate (share of modalities dropped per sample)")
        ax.set_ylabel(f"test {metric} (mean over seeds, 95% CI)")
        ax.set_title(f"{dataset}: {metric} vs missing rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        out = path / f"{dataset}-missing-rate.png"
        fig.savefig(out, dpi=120)
        written.append(out)
    return written


def combination_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Per point, method, combination: the primary metric over seeds under the per-combination protocol."""
    rows = []
    for _, r in frame.iterrows():
        metric = primary_metric(int(r.classes))
        for c in r.record.get("combinations") or []:
            keep = {k: c[k] for k in ("combination", "index", "size", "n")}
            rows.append({"point": r.point, "method": r.method, **keep, "seed": r.seed, "metric": metric,
                         "value": c[metric]})  # fmt: skip
    return pd.DataFrame(rows)


def combination_tables(combos: pd.DataFrame, sweep: Sweep) -> dict[str, pd.DataFrame]:
    """Per grid point: combinations (rows, published order) x methods (columns, sweep order), the mean over seeds."""
    tables = {}
    for point, g in combos.groupby("point", sort=False):
        table = g.groupby(["index", "combination", "method"]).value.mean().unstack("method")
        tables[point] = table[[m for m in sweep.methods if m in table.columns]]  # rows: by index (groupby sorts)
    return tables


def plot_combinations(tables: dict[str, pd.DataFrame], metric: dict[str, str], path: Path) -> list[Path]:
    """A heatmap per grid point of ``combination_tables`` (``metric``: the primary metric per point)."""
    # pragma: no mutate block (drawing only: the numbers are combination_tables', tested by hand)
    written = []
    for point, table in tables.items():
        n_rows = len(table)
        values = table.to_numpy(dtype=float)
        fig = Figure(figsize=(max(5.5, 2.5 + 0.9 * table.shape[1]), 1.5 + 0.22 * n_rows))
        ax = fig.subplots()
        im = ax.imshow(values, aspect="auto", cmap="viridis")
        if n_rows <= 31:  # small enough to print the numbers
            for (i, j), v in np.ndenumerate(values):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.7 else "k")
        ax.set_xticks(range(table.shape[1]), table.columns, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n_rows), table.index.get_level_values("combination"), fontsize=6 if n_rows > 20 else 8)
        ax.set_xlabel("method")
        ax.set_ylabel("observed modalities")
        ax.set_title(f"{point}: test {metric[point]} per combination", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.05)
        fig.tight_layout()
        out = path / f"{file_name(point)}-combinations.png"
        fig.savefig(out, dpi=120)
        written.append(out)
    return written


def skipped_text(sweep: Sweep, frame: pd.DataFrame, planned: set[str]) -> str:
    """ ", less N skipped by the sweep file: <reason> (n cells); ..." (and how many of them a store holds anyway:
    they are in the tables), or "" when nothing is skipped."""
    counts: dict[str, int] = {}
    for cell in sweep.cells():
        reason = sweep.skip_reason(cell)
        if reason is not None:
            counts[reason] = counts.get(reason, 0) + 1
    if not counts:
        return ""
    held = int((~frame.key.isin(planned)).sum())
    reasons = "; ".join(f"{reason} ({n} cells)" for reason, n in counts.items())
    extra = f"; {held} of them finished anyway and are in the tables" if held else ""
    return f", less {sum(counts.values())} skipped by the sweep file: {reasons}{extra}"


def render(sweep: Sweep, results_dir: str | Path, command: str = "") -> Path:
    """Write README.md (tables, plots, command), summary.csv, combinations.csv and plots/ to
    ``<results_dir>/<sweep name>/``."""
    results_dir = Path(results_dir)
    out_dir = results_dir / sweep.name
    out_dir.mkdir(exist_ok=True)  # results_dir holds the store, so it exists
    frame = load_frame(sweep, results_dir)
    if frame.empty:
        raise ValueError(f"no finished cells of sweep '{sweep.name}' in {results_dir / 'cells.jsonl'}")
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    summary = summary_table(frame, sweep)
    summary.to_csv(out_dir / "summary.csv", index=False, float_format="%.5f")
    combos = combination_frame(frame)
    pngs = plot_missing_rate(missing_rate_curves(frame, sweep), sweep.reference, plots)
    if not combos.empty:
        combos.groupby(["point", "method", "index", "combination", "size", "metric"]).value.agg(
            ["mean", "std", "count"]
        ).reset_index().to_csv(out_dir / "combinations.csv", index=False, float_format="%.5f")
        metric = dict(zip(combos.point, combos.metric))
        pngs += plot_combinations(combination_tables(combos, sweep), metric, plots)
    sessions = read_sessions(out_dir)
    total = sum(s["seconds"] for s in sessions)
    planned = {c["key"] for c in sweep.planned()}
    finished = int(frame.key.isin(planned).sum())
    per_size = markdown_per_size(frame, sweep)
    worst = worst_groups(frame)
    lines = [
        f"# Sweep `{sweep.name}`",
        "",
        sweep.description,
        "",
        f"Made by: `{command}`" if command else "",
        "",
        f"Cells finished: {finished} of {len(planned)} planned ({len(sweep.methods)} methods x {len(sweep.grid)} "
        f"grid points x {len(sweep.seeds)} seeds{skipped_text(sweep, frame, planned)}); wall time of the sweep's "
        f"sessions: {total / 60:.1f} min ({len(sessions)} session(s), "
        f"{sessions[-1]['jobs'] if sessions else '?'} workers).",
        "",
        f"What is held equal: {sweep.budget}" if sweep.budget else "",
        "",
        "## Test results (mean ± std over seeds)",
        "",
        f"Marks against `{sweep.reference}` (paired over seeds, 95 % t interval of the difference): ▲ better "
        "beyond noise, ▼ worse beyond noise, ≈ within noise. No multiple-comparison correction."
        if sweep.reference
        else "",
        "",
        markdown_main(summary, sweep),
        "",
        COMPLETE_NOTE if "scope" in summary and (summary.scope == "complete").any() else "",
        "",
        *(
            [
                f"## Paired differences from `{sweep.reference}` (primary metric, 95 % t interval)",
                "",
                markdown_paired(summary, sweep),
                "",
            ]
            if sweep.reference
            else []
        ),
        *(["## By number of observed modalities (test split, mean over seeds)", "", per_size, ""] if per_size else []),
        *(
            [
                f"## Worst modality combination (test split, combinations with at least {WORST_MIN_ROWS} rows)",
                "",
                "Per seed, the combination of observed modalities on which the method scores lowest; the value is its "
                "mean over seeds, compared paired with the reference's own worst combination of the same seed."
                + (" Complete-case methods (†) are left out." if any(frame.complete) else ""),
                "",
                markdown_worst(worst, sweep),
                "",
            ]
            if not worst.empty
            else []
        ),
        "## Compute",
        "",
        markdown_costs(frame, sweep),
        "",
        "## Plots",
        "",
        *[f"![{p.stem}](plots/{p.name})" for p in pngs],
        "",
        "Full statistics (every metric, 95 % CIs, paired differences and p-values): `summary.csv`; "
        + ("per-combination results: `combinations.csv`; " if not combos.empty else "")
        + "raw per-cell records (every sweep's): `../cells.jsonl`.",
        "",
    ]
    readme = out_dir / "README.md"
    readme.write_text(re.sub(r"\n{3,}", "\n\n", "\n".join(lines)))  # an absent optional line leaves one blank
    (out_dir / "summary.json").write_text(json.dumps({"cells": finished, "expected": len(planned)}))
    return readme
