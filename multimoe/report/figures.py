"""Figures of the routing report, drawn from its data frames (``multimoe.report``) and returned as PNG bytes.

Matplotlib's object API (``Figure``, rendered by Agg) rather than ``pyplot``: no global backend or figure state, so
the report works headless and inside other programs. Axes carry labels, modalities and combinations their names;
large grids (mfeat: 63 combinations x 63 experts) get small fonts and a size that grows with the grid.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 110
TICK = 6  # font size of dense tick labels
FILL_COLORS = {"trained": "tab:blue", "init": "tab:gray", "update": "tab:orange"}


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # constrained layout keeps labels inside the canvas
    return buf.getvalue()


MAX_LABELS = 80  # beyond this many categories on an axis, label every n-th
MATRIX_LABELS = 40  # bank matrices with more combinations per panel go without names


def _tick_size(n: int) -> float:
    return 8 if n <= 16 else (TICK if n <= 40 else 5)


def _height(labels: list[str], base: float = 3.2) -> float:
    """Figure height that leaves room for rotated category labels below the plot."""
    longest = max((len(x) for x in labels), default=0)
    return min(base + 0.065 * longest, 9.0)


def _label_axis(ax, axis: str, labels: list[str], rotation: float = 0) -> None:
    """Category labels on ``axis`` ("x" or "y"), thinned to at most ``MAX_LABELS``."""
    n = len(labels)
    step = -(-n // MAX_LABELS)
    pos = list(range(0, n, step))
    shown = [labels[i] for i in pos]
    if axis == "x":
        ax.set_xticks(pos, shown, rotation=rotation, fontsize=_tick_size(n))
    else:
        ax.set_yticks(pos, shown, fontsize=_tick_size(n))


def activation_heatmap(
    act: pd.DataFrame,
    rows: list[str],
    row_col: str,
    title: str,
    share: str = "slot_share",
    own: dict[str, int] | None = None,
    separators: list[int] | None = None,
) -> bytes:
    """Groups (rows, in the given order) x experts, coloured by ``share``; ``own`` marks each row's target expert."""
    E = int(act["expert"].max()) + 1
    grid = act.pivot_table(index=row_col, columns="expert", values=share, aggfunc="first")
    grid = grid.reindex(index=rows, columns=range(E))
    R = len(rows)
    fig = Figure(figsize=(min(max(5.5, 0.17 * E + 3.8), 16), min(max(2.8, 0.17 * R + 1.6), 16)), layout="constrained")
    ax = fig.add_subplot()
    vmax = float(np.nanmax(grid.to_numpy())) if np.isfinite(grid.to_numpy()).any() else 1.0
    im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis", norm=PowerNorm(0.5, vmin=0, vmax=max(vmax, 1e-9)))
    _label_axis(ax, "y", rows)
    step = -(-E // 32)  # at most ~32 expert labels
    ax.set_xticks(range(0, E, step), [str(e) for e in range(0, E, step)], fontsize=_tick_size(E))
    ax.set_xlabel("expert")
    ax.set_ylabel(row_col)
    ax.set_title(title, fontsize=10)
    if own:
        ys = [i for i, r in enumerate(rows) if r in own]
        ax.scatter([own[rows[i]] for i in ys], ys, marker="s", s=14, facecolors="none", edgecolors="red", lw=0.8)
    for y in separators or []:
        ax.axhline(y - 0.5, color="white", lw=0.8)
    label = {"slot_share": "share of top-k slots", "weight_share": "share of gate weight", "top1_share": "top-1 share",
             "mean_weight": "mean gate weight"}  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01).set_label(f"{label.get(share, share)} (sqrt scale)", fontsize=8)
    return to_png(fig)


def own_expert_bars(rc: pd.DataFrame, title: str) -> bytes:
    """Per combination: share of its tokens whose top-1 is / top-k includes its own (target) expert."""
    names = rc["combination"].tolist()
    n = len(names)
    fig = Figure(figsize=(min(max(6, 0.2 * n + 2), 16), _height(names)), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(n)
    ax.bar(x - 0.2, rc["own_topk"], 0.4, label="own expert in top-k", color="tab:green")
    ax.bar(x + 0.2, rc["own_top1"], 0.4, label="own expert is top-1", color="tab:purple")
    ax.axhline(1.0, color="gray", lw=0.5)
    _label_axis(ax, "x", names, rotation=90)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xlabel("modality combination (test tokens)")
    ax.set_ylabel("share of the combination's tokens")
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    return to_png(fig)


def entropy_bars(rc: pd.DataFrame, rm: pd.DataFrame, num_experts: int, title: str) -> bytes:
    """Router entropy and usage entropy per modality (observed / filled) and per combination."""
    n = len(rc)
    fig = Figure(figsize=(min(max(8, 0.2 * n + 4), 18), _height(rc["combination"].tolist())), layout="constrained")
    ax_m, ax_c = fig.subplots(1, 2, width_ratios=[max(len(rm), 4), max(n, 4)])
    ceiling = np.log(num_experts)
    for ax, frame, labels, xlabel in (
        (ax_m, rm, [f"{m}{'' if o else ' (filled)'}" for m, o in zip(rm["modality"], rm["observed"])], "modality"),
        (ax_c, rc, rc["combination"].tolist(), "modality combination"),
    ):
        x = np.arange(len(frame))
        ax.bar(x - 0.2, frame["router_entropy"], 0.4, label="router entropy (per token)", color="tab:blue")
        ax.bar(x + 0.2, frame["usage_entropy"], 0.4, label="usage entropy (of the group)", color="tab:orange")
        ax.axhline(ceiling, color="gray", ls="--", lw=0.8, label=f"log E = {ceiling:.2f}")
        _label_axis(ax, "x", labels, rotation=90)
        ax.set_xlim(-0.6, len(frame) - 0.4)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("entropy (nats)")
        ax.set_ylim(0, ceiling * 1.08)
    handles, names = ax_m.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return to_png(fig)


def load_bars(load: pd.DataFrame, balance: pd.Series, title: str) -> bytes:
    """Share of top-k slots per expert, uniform share and CV in the title."""
    E = len(load)
    fig = Figure(figsize=(min(max(6, 0.16 * E + 2), 16), 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(load["expert"], load["slot_share"], color="tab:blue", width=0.8)
    ax.axhline(1 / E, color="red", ls="--", lw=0.8, label=f"uniform (1/{E})")
    ax.set_xlabel("expert")
    ax.set_ylabel("share of top-k slots (test tokens)")
    step = -(-E // 32)  # at most ~32 expert labels
    ax.set_xticks(range(0, E, step), [str(e) for e in range(0, E, step)], fontsize=_tick_size(E))
    ax.set_xlim(-0.6, E - 0.4)
    ax.set_title(
        f"{title}: CV of slots {balance['slot_cv']:.3f}, of gate weight {balance['importance_cv']:.3f}, "
        f"{int(balance['unused_experts'])} unused",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    return to_png(fig)


def bank_similarity_plot(pairs: pd.DataFrame, claim: pd.DataFrame, by_shared: pd.DataFrame) -> bytes:
    """Cosine of two combinations' fills against the modalities they share: pairs (jittered), means, correlation."""
    fills = claim["fill"].tolist()
    fig = Figure(figsize=(4.2 * len(fills), 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(fills), sharex=True))
    rng = np.random.default_rng(0)
    for ax, fill in zip(axes, fills):
        col = f"cosine_{fill}"
        jitter = rng.uniform(-0.15, 0.15, len(pairs))
        size, alpha = (4, 0.35) if len(pairs) > 200 else (14, 0.7)
        ax.scatter(pairs["shared"] + jitter, pairs[col], s=size, alpha=alpha, color=FILL_COLORS[fill], lw=0)
        means = by_shared[by_shared["fill"] == fill]
        ax.errorbar(
            means["shared"], means["mean"], yerr=means["std"], color="black", marker="o", ms=4, capsize=3,
            label="mean ± std",
        )  # fmt: skip
        ax.legend(fontsize=7, loc="lower left")
        c = claim[claim["fill"] == fill].iloc[0]
        if c["spearman"] is None or pd.isna(c["spearman"]):
            stat = "correlation undefined"
        else:
            stat = f"Spearman {c['spearman']:.3f} [{c['spearman_lo']:.3f}, {c['spearman_hi']:.3f}]"
        ax.set_title(f"{fill} bank: {stat}", fontsize=9)
        ax.set_xlabel("modalities both combinations observe")
        ax.set_ylabel("cosine similarity of the fills")
        ax.set_xticks(sorted(pairs["shared"].unique()))
    fig.suptitle(
        f"Missing-modality bank: {len(pairs)} pairs of trained combinations lacking the same modality", fontsize=10
    )
    return to_png(fig)


def bank_matrices(pairs: pd.DataFrame, modalities: list[str], fill: str = "trained") -> bytes:
    """Per modality: cosine between the fills of every two trained combinations that lack it."""
    mods = [m for m in modalities if (pairs["modality"] == m).any()]
    cols = min(3, len(mods))
    rows = -(-len(mods) // cols)
    sizes = [len(set(pairs.loc[pairs["modality"] == m, "index_a"]) | set(pairs.loc[pairs["modality"] == m, "index_b"]))
             for m in mods]  # fmt: skip
    side = min(max(3.0, 0.11 * max(sizes) + 1.8), 5.5)
    fig = Figure(figsize=(side * cols, side * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    col = f"cosine_{fill}"
    lim = float(np.nanmax(np.abs(pairs[col]))) if len(pairs) else 1.0
    im = None
    for ax, m in zip(axes, mods):
        sub = pairs[pairs["modality"] == m]
        idx = sorted(set(sub["index_a"]) | set(sub["index_b"]))
        names = dict(zip(sub["index_a"], sub["combination_a"])) | dict(zip(sub["index_b"], sub["combination_b"]))
        pos = {c: i for i, c in enumerate(idx)}
        mat = np.full((len(idx), len(idx)), np.nan)
        mat[[pos[a] for a in sub["index_a"]], [pos[b] for b in sub["index_b"]]] = sub[col]
        mat[[pos[b] for b in sub["index_b"]], [pos[a] for a in sub["index_a"]]] = sub[col]
        im = ax.imshow(mat, cmap="RdBu_r", vmin=-lim, vmax=lim)
        labels = [names[c] for c in idx]
        if len(idx) <= MATRIX_LABELS:
            _label_axis(ax, "x", labels, rotation=90)
            _label_axis(ax, "y", labels)
        else:  # names would be unreadable: the pairs are in the frame bank_pairs
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{len(idx)} trained combinations lacking it (published order)", fontsize=8)
        ax.set_title(f"fills of missing '{m}'", fontsize=9)
    for ax in axes[len(mods) :]:
        ax.set_axis_off()
    if im is not None:
        fig.colorbar(im, ax=list(axes), fraction=0.02, pad=0.01).set_label(
            "cosine similarity of the updates (trained - initial)"
            if fill == "update"
            else f"cosine similarity ({fill})"
        )
    return to_png(fig)


def metrics_bars(metrics: pd.DataFrame, by_size: pd.DataFrame, title: str) -> bytes:
    """Accuracy, macro F1 and AUC per number of observed modalities (pooled) and per combination, with the number
    of test samples in each label; undefined scores (e.g. AUC of a single sample) have no bar."""
    n = len(metrics)
    combo_labels = [f"{c} (n={k})" for c, k in zip(metrics["combination"], metrics["n"])]
    fig = Figure(figsize=(min(max(7, 0.3 * n + 3.5), 18), _height(combo_labels)), layout="constrained")
    ax_s, ax_c = fig.subplots(1, 2, width_ratios=[max(len(by_size), 2) + 1, max(n, 4)], sharey=True)
    for ax, frame, labels, xlabel in (
        (ax_s, by_size, [f"{k} (n={m})" for k, m in zip(by_size["size"], by_size["n"])], "observed modalities"),
        (ax_c, metrics, combo_labels, "modality combination"),
    ):
        x = np.arange(len(frame))
        for off, key, color in ((-0.27, "accuracy", "tab:blue"), (0, "f1", "tab:orange"), (0.27, "auc", "tab:green")):
            values = pd.to_numeric(frame[key], errors="coerce")
            ax.bar(x + off, values, 0.27, label={"f1": "macro F1", "auc": "AUC"}.get(key, key), color=color)
        _label_axis(ax, "x", labels, rotation=90)
        ax.set_xlim(-0.6, len(frame) - 0.4)
        ax.set_xlabel(f"{xlabel} (test samples)")
    ax_s.set_ylabel("score")
    ax_s.set_ylim(0, 1.05)
    handles, names = ax_c.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside upper right", ncols=3, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return to_png(fig)


def drift_plot(drift: pd.DataFrame, epochs: pd.DataFrame, best_epoch: int | None, select: str) -> bytes:
    """Validation routing over training epochs: load CV, own-expert gate share, usage entropy per modality, and the
    validation metric; the dashed line marks the epoch whose weights the report evaluates. Of an ensemble (a
    ``member`` column), member 0's layers: every member's would crowd the panels (the frame holds them all)."""
    members = drift["member"].nunique() if "member" in drift else 1
    if members > 1:
        drift = drift[drift["member"] == 0]
    panels = [s for s in ("load_cv", "own_weight", "usage_entropy") if (drift["stat"] == s).any()]
    has_val = not epochs.empty and f"val_{select}" in epochs
    n = len(panels) + int(has_val)
    fig = Figure(figsize=(4.0 * n, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    labels = {
        "load_cv": "load CV (top-k slots)",
        "own_weight": "own-expert gate share (partial)",
        "usage_entropy": "usage entropy (nats)",
    }
    for ax, stat in zip(axes, panels):
        sub = drift[drift["stat"] == stat]
        for (layer, group), g in sub.groupby(["layer", "group"], sort=False):
            name = group if sub["layer"].nunique() == 1 else f"{group}, layer {layer}"
            ax.plot(g["epoch"], g["value"], marker=".", lw=1, label=name)
        ax.set_ylabel(labels[stat])
        ax.legend(fontsize=6)
    if has_val:
        ax = axes[-1]
        ax.plot(epochs["epoch"], epochs[f"val_{select}"], marker=".", color="black", lw=1)
        ax.set_ylabel(f"validation {select}")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best_epoch is not None:
            ax.axvline(best_epoch, color="gray", ls="--", lw=0.8)
    whose = f", member 0 of {members}" if members > 1 else ""
    fig.suptitle(
        f"Routing drift on the validation split{whose} (dashed: the best epoch, evaluated in this report)", fontsize=10
    )
    return to_png(fig)
