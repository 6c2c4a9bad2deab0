"""The routing report as a page: a self-contained HTML file (figures embedded as PNG data URIs, opens offline), the
same figures as PNG files and the frames of ``report.frames`` as CSV files."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

import multimoe.report.figures as figs
from multimoe.data.table import Table
from multimoe.files import atomic_write
from multimoe.report.frames import report_frames
from multimoe.runs.reopen import open_run

COLUMN_LABELS = {
    "n": "test n",
    "train_samples": "train n",
    "f1": "macro F1",
    "auc": "AUC",
    "own_expert": "own expert",
    "own_top1": "own top-1",
    "own_topk": "own in top-k",
    "own_weight": "own gate share",
    "router_entropy": "router entropy",
    "usage_entropy": "usage entropy",
    "effective_experts": "effective experts",
    "slot_cv": "CV (slots)",
    "importance_cv": "CV (gate weight)",
    "max_over_mean": "max / mean",
    "unused_experts": "unused experts",
    "spearman": "Spearman",
    "pearson": "Pearson",
    "spearman_lo": "Spearman 2.5 %",
    "spearman_hi": "Spearman 97.5 %",
    "pearson_lo": "Pearson 2.5 %",
    "pearson_hi": "Pearson 97.5 %",
    "mantel_p": "Mantel p",
}


def format_cell(value) -> str:
    """How a frame value appears in the HTML (the tests parse it back): 4 decimals, '-' when undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}"
    return html.escape(str(value))


def html_table(frame: pd.DataFrame, name: str, columns: list[str] | None = None) -> str:
    """A table of ``frame``; ``data-frame`` names the frame and ``data-col`` each column, so tests can check it."""
    columns = [c for c in (columns or list(frame.columns)) if c in frame]
    head = "".join(f'<th data-col="{c}">{html.escape(COLUMN_LABELS.get(c, c.replace("_", " ")))}</th>' for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{format_cell(v)}</td>" for v in row) + "</tr>\n"
        for row in frame[columns].itertuples(index=False)
    )
    return f'<table data-frame="{name}"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>'


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1400px;margin:1.5em auto;padding:0 1em;
color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:12px;margin:0.6em 0}th,td{border:1px solid #ddd;padding:2px 6px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;display:block;margin:0.6em 0}p.def{font-size:13px;color:#444}
details{margin:0.5em 0}summary{cursor:pointer;color:#035}
"""


class _Page:
    """Collects HTML sections and the figures written next to the page."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.figures: dict[str, bytes] = {}

    def h2(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def p(self, text: str) -> None:
        self.parts.append(f'<p class="def">{text}</p>')

    def figure(self, name: str, png: bytes, alt: str) -> None:
        self.figures[f"{name}.png"] = png
        self.parts.append(_img(png, alt))

    def table(self, frame: pd.DataFrame, name: str, columns: list[str] | None = None, fold: str | None = None) -> None:
        t = html_table(frame, name, columns)
        self.parts.append(f"<details><summary>{html.escape(fold)}</summary>{t}</details>" if fold else t)


def _combination_order(names: list[str]) -> list[int]:
    """Separator positions between combination sizes (rows are in the published order: size descending)."""
    sizes = [n.count("+") + 1 for n in names]
    return [i for i in range(1, len(sizes)) if sizes[i] != sizes[i - 1]]


def _routing_sections(page: _Page, frames: dict[str, pd.DataFrame], modalities: list[str], arch: str = "") -> None:
    rc_all, rm_all, bal_all = frames["routing_combination"], frames["routing_modality"], frames["load_balance"]
    if arch == "i2moe":
        _interaction_section(page, frames, modalities)
        return
    layers = sorted(rc_all["layer"].unique())
    for layer in layers:
        rc = rc_all[rc_all["layer"] == layer]
        sfx, title_sfx = (f"_layer{layer}", f" (MoE layer {layer})") if len(layers) > 1 else ("", "")
        if "member" in rc:  # an ensemble: its members' layers in member order
            member = int(rc["member"].iloc[0])
            within = layer - min(rc_all.loc[rc_all["member"] == member, "layer"])
            title_sfx = f" (member {member}, MoE layer {within})"
        rm = rm_all[rm_all["layer"] == layer]
        bal = bal_all[bal_all["layer"] == layer].iloc[0]
        ac = frames["activation_combination"]
        ac = ac[ac["layer"] == layer]
        am = frames["activation_modality"]
        am = am[am["layer"] == layer]
        names = rc["combination"].tolist()
        own = dict(zip(rc["combination"], rc["own_expert"])) if "own_expert" in rc else None

        page.h2(f"Expert activation by modality combination{title_sfx}")
        page.p(
            "Each row is a modality combination of the test split (published order: largest first; white lines "
            "separate sizes); each cell the share of that combination's top-k slot assignments that go to the expert "
            "(the fraction of its tokens routed there, divided by k; rows sum to 1)."
            + (" Red squares mark each combination's own (supervised) expert." if own else "")
        )
        page.figure(
            f"activation_combination{sfx}",
            figs.activation_heatmap(
                ac,
                names,
                "combination",
                "Expert activation by combination (test tokens)",
                own=own,
                separators=_combination_order(names),
            ),  # fmt: skip
            "expert activation by combination",
        )
        page.h2(f"Expert activation by modality{title_sfx}")
        page.p(
            "Tokens grouped by their modality: observed tokens, and tokens of a missing modality (filled, e.g. from "
            "the bank). Rows sum to 1."
        )
        labels = [f"{m}{'' if o else ' (filled)'}" for m, o in zip(rm["modality"], rm["observed"])]
        am = am.assign(group=[f"{m}{'' if o else ' (filled)'}" for m, o in zip(am["modality"], am["observed"])])
        n_obs = int(rm["observed"].sum())
        page.figure(
            f"activation_modality{sfx}",
            figs.activation_heatmap(
                am,
                labels,
                "group",
                "Expert activation by modality (test tokens)",
                separators=[n_obs] if 0 < n_obs < len(labels) else None,
            ),  # fmt: skip
            "expert activation by modality",
        )
        if arch == "confsmoe":
            page.h2(f"Expert confidence by modality combination{title_sfx}")
            page.p(
                "Conf-SMoE weighs each chosen expert's output by that expert's confidence (its ConfNet) instead of a "
                "softmax score. Each cell: the mean confidence of the expert's outputs for the combination's observed "
                "tokens (blank: the expert never chosen there)."
            )
            page.figure(
                f"confidence_combination{sfx}",
                figs.activation_heatmap(
                    ac,
                    names,
                    "combination",
                    "Mean expert confidence by combination (test tokens)",
                    share="mean_weight",
                    separators=_combination_order(names),
                ),  # fmt: skip
                "expert confidence by combination",
            )
        if own:
            partial = rc[rc["index"] > 0]
            w = partial["tokens"] / max(partial["tokens"].sum(), 1)
            page.h2(f"Own expert under combination supervision{title_sfx}")
            page.p(
                "Flex-MoE's S-router trains the tokens of combination c towards expert c. Share of each "
                "combination's tokens whose top-1 is its own expert, and whose top-k includes it. Over partial "
                f"combinations (token-weighted): top-1 {format_cell(float((w * partial['own_top1']).sum()))}, "
                f"in top-k {format_cell(float((w * partial['own_topk']).sum()))}. The full set's target is nominal "
                "(its tokens are trained for balance)."
            )
            page.figure(
                f"own_expert{sfx}",
                figs.own_expert_bars(rc, "Own-expert share per combination (test tokens)"),
                "own expert share",
            )
        page.h2(f"Routing entropy and load balance{title_sfx}")
        page.p(
            "Router entropy: mean over tokens of the entropy of the router's softmax over all experts (low = decided). "
            "Usage entropy: entropy of the group's gate-weight shares (low = the group concentrates on few experts; "
            "its exponential is the effective number of experts). Load CV: std / mean of top-k slots over experts."
        )
        page.figure(
            f"entropy{sfx}",
            figs.entropy_bars(rc, rm, int(bal["experts"]), "Routing entropy per modality and per combination"),
            "routing entropy",
        )
        page.table(bal_all[bal_all["layer"] == layer], "load_balance")
        load = frames["load"]
        page.figure(f"load{sfx}", figs.load_bars(load[load["layer"] == layer], bal, "Load per expert"), "load")
        page.table(rm, "routing_modality")
        page.table(rc, "routing_combination", fold=f"Routing per combination ({len(rc)} rows)")


def _interaction_section(page: _Page, frames: dict[str, pd.DataFrame], modalities: list[str]) -> None:
    """I2MoE: its interaction weights per modality combination and per modality, in place of expert activation."""
    ac, am, rc = frames["activation_combination"], frames["activation_modality"], frames["routing_combination"]
    M = len(modalities)
    names_E = [f"{i} uniqueness of {m}" for i, m in enumerate(modalities)] + [f"{M} synergy", f"{M + 1} redundancy"]
    experts = ", ".join(names_E)
    names = rc["combination"].tolist()
    page.h2("Interaction weights by modality combination")
    page.p(
        "I2MoE runs every interaction expert on every sample and weighs their logits with the reweighting MLP's "
        f"weights (they sum to 1 per sample). Experts: {html.escape(experts)}. Each cell: the mean weight the "
        "combination's test samples give the expert (rows sum to 1)."
    )
    page.figure(
        "interaction_combination",
        figs.activation_heatmap(
            ac,
            names,
            "combination",
            "Interaction weights by combination (test samples)",
            share="weight_share",
            separators=_combination_order(names),
        ),  # fmt: skip
        "interaction weights by combination",
    )
    rm = frames["routing_modality"]
    labels = [f"{m}{'' if o else ' (filled)'}" for m, o in zip(rm["modality"], rm["observed"])]
    am = am.assign(group=[f"{m}{'' if o else ' (filled)'}" for m, o in zip(am["modality"], am["observed"])])
    page.h2("Interaction weights by modality")
    page.p("Mean interaction weights of the test samples that observe each modality, and of those that lack it.")
    page.figure(
        "interaction_modality",
        figs.activation_heatmap(
            am, labels, "group", "Interaction weights by modality (test samples)", share="weight_share"
        ),  # fmt: skip
        "interaction weights by modality",
    )
    page.table(rc, "routing_combination", fold=f"Interaction weights' entropy per combination ({len(rc)} rows)")


def _bank_section(page: _Page, frames: dict[str, pd.DataFrame], modalities: list[str]) -> None:
    page.h2("Missing-modality bank: are fills of combinations that share modalities more similar?")
    pairs, claim = frames["bank_pairs"], frames["bank_claim"]
    items = zip(frames["summary"]["item"], frames["summary"]["value"])
    notes = [v for k, v in items if str(k).startswith("note") and "bank" in str(v)]
    for note in notes:
        page.p(html.escape(str(note)))
    if pairs.empty:
        return
    page.p(
        "Flex-MoE's claim: bank entries of combinations that share more modalities are more similar. For each "
        "modality m and two trained combinations that both lack m: cosine similarity of their fills bank[c, m] "
        "(flattened P x D) against the number of modalities both observe. Spearman and Pearson correlations with "
        f"percentile bootstrap 95 % intervals ({int(claim['resamples'].iloc[0])} resamples of pairs). Pairs share bank "
        "rows, so these intervals are optimistic; the Mantel p-value (two-sided, fills permuted among the "
        "combinations lacking each modality) respects that dependence. <b>init</b>: the same bank at "
        "initialisation (rebuilt from the seed; under weight decay shrunk as the rows training never reads were), the "
        "baseline: a correlation the initial bank shows too was not "
        "learned; <b>update</b>: trained minus initial, what training wrote into the bank."
    )
    page.table(claim, "bank_claim")
    by_shared, rows = frames["bank_by_shared"], frames["bank_rows"]
    if "member" in claim:  # an ensemble: every member in the tables, the first one's in the figures
        page.p(f"An ensemble of {claim['member'].nunique()} members, each with its own bank: the tables list every "
               "member, the figures and the summary show member 0.")  # fmt: skip
        pairs, claim, by_shared = (f[f["member"] == 0] for f in (pairs, claim, by_shared))
    page.figure("bank_similarity", figs.bank_similarity_plot(pairs, claim, by_shared), "bank similarity")
    page.table(frames["bank_by_shared"], "bank_by_shared")
    fill = "update" if "cosine_update" in pairs else "trained"
    page.p(
        f"Per modality, the cosine between the {'updates (trained - initial)' if fill == 'update' else 'fills'} of "
        "every two trained combinations lacking it; every pair is in the frame <code>bank_pairs</code>. Trained fills "
        "that stay close to their random initialisation (see how far they moved, below) look like noise; their "
        "updates show what training wrote."
    )
    page.figure("bank_matrices", figs.bank_matrices(pairs, modalities, fill), f"bank cosine matrices ({fill})")
    if "relative_update" in rows:
        page.p(_moved(rows[rows["train_samples"] > 0]))
    page.table(rows, "bank_rows", fold=f"Bank fills ({len(rows)} readable rows)")


def _moved(read: pd.DataFrame) -> str:
    """How far the fills read in training moved from their initialisation: the median relative update and cosine,
    per member of an ensemble (each member has its own bank)."""
    groups = [g for _, g in read.groupby("member")] if "member" in read else [read]
    moved = ", ".join(format_cell(float(g["relative_update"].median())) for g in groups)
    cosine = ", ".join(format_cell(float(g["cosine_to_init"].median())) for g in groups)
    each, plural = (", member by member", "s") if len(groups) > 1 else ("", "")
    return (
        f"Fills read in training moved by a median {moved} of their initial norm{each} (cosine to their initial "
        f"value: median{plural} {cosine})."
    )


def _ci(row: pd.Series, key: str) -> str:
    if row[key] is None or pd.isna(row[key]):
        return "undefined"
    text = f"{format_cell(row[key])} [{format_cell(row[key + '_lo'])}, {format_cell(row[key + '_hi'])}]"
    return text + (f" (Mantel p {format_cell(row['mantel_p'])})" if pd.notna(row.get("mantel_p")) else "")


def highlights(frames: dict[str, pd.DataFrame]) -> list[str]:
    """One-line readings of the main numbers (layer 0), for the top of the page."""
    out = []
    bal, rc, rm = frames["load_balance"], frames["routing_combination"], frames["routing_modality"]
    if not bal.empty:
        b = bal.iloc[0]
        out.append(
            f"Load over {int(b['experts'])} experts (top-{int(b['top_k'])}): CV {format_cell(b['slot_cv'])}, busiest "
            f"expert {format_cell(b['max_over_mean'])} x the mean, {int(b['unused_experts'])} unused."
        )
        rc0, rm0 = rc[rc["layer"] == 0], rm[rm["layer"] == 0]
        if "own_topk" in rc0:
            part = rc0[rc0["index"] > 0]
            w = part["tokens"] / max(part["tokens"].sum(), 1)
            E, K = int(b["experts"]), int(b["top_k"])
            top1, topk = float((w * part["own_top1"]).sum()), float((w * part["own_topk"]).sum())
            out.append(
                f"Own expert (partial combinations, token-weighted): top-1 {format_cell(top1)} (chance "
                f"{format_cell(1 / E)}), in top-k {format_cell(topk)} (chance {format_cell(K / E)})."
            )
        for observed, what in ((True, "observed"), (False, "filled")):
            sub = rm0[rm0["observed"] == observed]
            if not sub.empty:
                spread = ", ".join(f"{m} {v:.1f}" for m, v in zip(sub["modality"], sub["effective_experts"]))
                out.append(f"Effective experts of {what} tokens per modality: {spread}.")
    claim = frames["bank_claim"]
    if not claim.empty:
        members = "member" in claim
        c = (claim[claim["member"] == 0] if members else claim).set_index("fill")
        who = "member 0's bank" if members else "Bank"
        text = f"{who} similarity vs shared modalities, Spearman [95 % CI]: trained {_ci(c.loc['trained'], 'spearman')}"
        if "update" in c.index:
            text += f"; init {_ci(c.loc['init'], 'spearman')}; update {_ci(c.loc['update'], 'spearman')}"
        out.append(text + f" ({int(c.loc['trained', 'pairs'])} pairs).")
        if members:
            fill = "update" if "update" in c.index else "trained"
            each = claim[claim["fill"] == fill]
            out.append(f"Spearman ({fill}) of every member: "
                       + ", ".join(format_cell(v) for v in each["spearman"]) + ".")  # fmt: skip
    drift = frames["drift"]
    for stat, what in (("own_weight", "own-expert gate share"), ("load_cv", "load CV")):
        d = drift[(drift["stat"] == stat) & (drift["layer"] == 0)] if not drift.empty else drift
        if len(d) > 1:
            out.append(
                f"Validation {what} over training: {format_cell(d['value'].iloc[0])} (epoch {d['epoch'].iloc[0]})"
                f" to {format_cell(d['value'].iloc[-1])} (epoch {d['epoch'].iloc[-1]})."
            )
    return out


def render_html(frames: dict[str, pd.DataFrame]) -> tuple[str, dict[str, bytes]]:
    """The report page and its figures (file name -> PNG bytes) from the frames of ``routing_report_frames``."""
    page = _Page()
    summary = dict(zip(frames["summary"]["item"], frames["summary"]["value"]))
    modalities = str(summary["modalities"]).split(", ")
    page.parts.append(f"<h1>Routing report: {html.escape(str(summary['run']))}</h1>")
    page.p(
        f"Test split of {html.escape(str(summary['dataset']))}, evaluated under "
        f"<b>{html.escape(str(summary['evaluated under']))}</b> (trained under "
        f"{html.escape(str(summary['trained under']))}); the best validation epoch's weights."
    )
    page.table(frames["summary"], "summary")
    page.parts.append("<ul>" + "".join(f"<li>{html.escape(h)}</li>" for h in highlights(frames)) + "</ul>")

    metrics = frames["metrics"]
    if not frames["routing_combination"].empty:
        _routing_sections(page, frames, modalities, str(summary.get("architecture", "")))
    _bank_section(page, frames, modalities)

    page.h2("Accuracy, F1 and AUC per modality combination")
    page.p(
        "Pooled by the number of observed modalities, and per combination with its test samples (test n) and how "
        "many training samples had it (train n). Small n make single-combination scores noisy."
    )
    page.figure(
        "metrics_by_combination", figs.metrics_bars(metrics, frames["metrics_by_size"], "Test metrics"), "metrics"
    )
    page.table(frames["metrics_by_size"], "metrics_by_size")
    page.table(metrics, "metrics")

    page.h2("Routing drift over training epochs")
    drift = frames["drift"]
    if drift.empty:
        page.p("The run logged no per-epoch routing (routing.jsonl).")
    else:
        best = summary.get("best epoch")
        select = str(summary.get("selected on", "validation accuracy")).removeprefix("validation ")
        page.p(
            "Validation routing of every epoch, from the run's routing log (gate weights): load CV, the gate-weight "
            "share partial combinations give their own expert, and usage entropy per modality (observed and filled "
            "tokens together)."
        )
        page.figure(
            "drift",
            figs.drift_plot(drift, frames["epochs"], None if best is None else int(best), select),
            "routing drift",
        )
    body = "\n".join(page.parts)
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Routing report: {html.escape(str(summary['run']))}</title><style>{CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )
    return doc, page.figures


def save_report(frames: dict[str, pd.DataFrame], out_dir: str | Path) -> Path:
    """Write ``report.html`` (self-contained), its figures as PNG files and ``frames`` as CSV files (``data/``) to
    ``out_dir``; returns the page's path."""
    out_dir = Path(out_dir)
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    doc, pngs = render_html(frames)
    for name, png in pngs.items():
        atomic_write(out_dir / name, lambda p, b=png: Path(p).write_bytes(b))
    for name, frame in frames.items():
        atomic_write(out_dir / "data" / f"{name}.csv", lambda p, f=frame: f.to_csv(p, index=False))
    page = out_dir / "report.html"
    atomic_write(page, lambda p: Path(p).write_text(doc, encoding="utf-8"))
    return page


def write_report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    overrides: list[str] | None = None,
    table: Table | None = None,
) -> Path:
    """The routing report of a run (see ``save_report``), in ``out_dir`` (default: ``RUN_DIR/report``, or
    ``RUN_DIR/report-<protocol>`` under another protocol); ``overrides`` as ``multimoe eval``. Returns the page."""
    run = open_run(run_dir, overrides, table)
    out_dir = out_dir if out_dir is not None else run.folder.report_dir(run.missing, run.cfg.data.missing)
    return save_report(report_frames(run), out_dir)
