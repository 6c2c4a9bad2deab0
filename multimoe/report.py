"""The routing report of a trained run: which experts serve which modalities and combinations, on the test split.

``routing_report_frames(run_dir)`` returns the statistics as pandas data frames (for your own plots);
``write_report(run_dir)`` writes them as a self-contained HTML page (figures embedded as PNG data URIs, opens offline)
plus the same figures as PNG files and the frames as CSV files. Definitions: ``routing_analysis`` (activation,
own expert, entropy, load) and ``bank_similarity`` (Flex-MoE's claim that fills of combinations sharing more
modalities are more similar).

The model is the run's best checkpoint; the splits are rebuilt from the run's seed (``runs.open_run``), so the test
split is the one the run was tested on, optionally under another missingness protocol (``data.missing=...``).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from multimoe import __version__
from multimoe import report_figures as figs
from multimoe.bank_similarity import bank_pairs, bank_rows, claim_frames, never_read_unchanged
from multimoe.batch import combination_name
from multimoe.checkpoint import atomic_write, read_meta
from multimoe.data import Table
from multimoe.evaluate import metrics_from_predictions, predict
from multimoe.missing import BankFill
from multimoe.model import build_model
from multimoe.moe import MoE
from multimoe.routing_analysis import RoutingTally, routing_drift, routing_frames
from multimoe.runs import OpenRun, open_run

BOOTSTRAP_RESAMPLES = 1000


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def initial_bank(run: OpenRun) -> np.ndarray | None:
    """The run's bank at initialisation, rebuilt from its seed as ``train`` builds the model; None when the rows
    training never reads differ from it (then it is not the run's initialisation)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.cfg.seed)
        init = build_model(run.cfg.model, run.splits.schema).fill.bank_CMPD.detach().numpy()
    trained = run.model.fill.bank_CMPD.detach().cpu().numpy()
    return init if never_read_unchanged(trained, init, run.splits.schema.num_modalities) else None


def _bank_frames(run: OpenRun, train_count_C: np.ndarray, notes: list[str]) -> dict[str, pd.DataFrame]:
    empty = {k: pd.DataFrame() for k in ("bank_pairs", "bank_claim", "bank_by_shared", "bank_rows")}
    if not isinstance(getattr(run.model, "fill", None), BankFill):
        notes.append(f"the model has no missing-modality bank (model.fill={run.cfg.model.fill}): no bank similarity")
        return empty
    modalities = run.splits.schema.modalities
    bank = run.model.fill.bank_CMPD.detach().cpu().numpy()
    init = initial_bank(run)
    if init is None:
        notes.append("the bank's initialisation could not be rebuilt exactly (e.g. weight decay): no init baseline")
    seen_C = train_count_C > 0
    C = len(train_count_C)
    if seen_C.all():
        notes.append(f"bank similarity: all {C} combinations occur in the training split")
    else:
        listed = "seen" if seen_C.sum() <= (~seen_C).sum() else "never seen"
        names = [combination_name(int(c), list(modalities)) for c in np.flatnonzero(seen_C == (listed == "seen"))]
        notes.append(
            f"bank similarity uses only the {int(seen_C.sum())} of {C} combinations that occur in the training split "
            f"({listed} in training: {', '.join(names)}); the rows of the others are never read and stay at their "
            "N(0, 1) initialisation"
        )
    pairs = bank_pairs(bank, modalities, train_count_C, init)
    if pairs.empty:
        notes.append("no two trained combinations lack the same modality: the bank-similarity claim cannot be tested")
    return {
        "bank_pairs": pairs,
        **claim_frames(pairs, BOOTSTRAP_RESAMPLES, seed=run.cfg.seed),
        "bank_rows": bank_rows(bank, modalities, train_count_C, init),
    }


def report_frames(run: OpenRun) -> dict[str, pd.DataFrame]:
    """The report's data frames for an opened run (see ``routing_report_frames``)."""
    schema = run.splits.schema
    M, C = schema.num_modalities, (1 << schema.num_modalities) - 1
    tally = RoutingTally(M)
    pred = predict(run.model, run.splits.test, run.batch_size, run.device, on_output=tally.update)
    result = metrics_from_predictions(pred, schema.modalities)
    train_count_C = np.bincount(run.splits.train.combo_N.numpy(), minlength=C)
    moes = [m for m in run.model.modules() if isinstance(m, MoE)]
    targets = [m.targets_C if m.supervision == "combination" else None for m in moes]
    notes: list[str] = []
    frames = routing_frames(tally, schema.modalities, targets)
    if not moes:
        notes.append("the model has no MoE layer (model.ffn=dense): no routing statistics")

    metrics = pd.DataFrame(
        result["per_combination"], columns=["combination", "index", "size", "n", "accuracy", "f1", "auc"]
    )
    metrics.insert(3, "train_samples", train_count_C[metrics["index"].to_numpy()].astype(np.int64))
    frames["metrics"] = metrics
    frames["metrics_by_size"] = pd.DataFrame(result["per_size"], columns=["size", "n", "accuracy", "f1", "auc"])

    frames.update(_bank_frames(run, train_count_C, notes))

    records = _read_jsonl(run.run_dir / "routing.jsonl")
    frames["drift"] = routing_drift(records, schema.modalities, targets)
    frames["epochs"] = pd.DataFrame(_read_jsonl(run.run_dir / "metrics.jsonl"))
    if frames["drift"].empty:
        notes.append("the run logged no per-epoch routing (routing.jsonl): no routing drift")

    best_epoch = read_meta(run.run_dir / "best.safetensors").get("epoch")  # the epoch of the evaluated weights
    o = result["overall"]
    r = run.cfg.model.moe.router
    seen = [combination_name(int(c), list(schema.modalities)) for c in np.flatnonzero(train_count_C)]
    items = {
        "run": run.run_dir.name,
        "dataset": run.cfg.data.name if run.cfg.data.spec is None else run.cfg.data.spec,
        "method": run.cfg.method,
        "seed": run.cfg.seed,
        "trained under": run.cfg.data.missing,
        "evaluated under": run.missing,
        "best epoch": None if best_epoch is None else int(best_epoch) + 1,
        "selected on": f"validation {run.cfg.train.select}",
        "modalities": ", ".join(schema.modalities),
        "test samples": o["n"],
        "test accuracy": o["accuracy"],
        "test macro F1": o["f1"],
        "test AUC": o["auc"],
        "MoE layers": len(moes),
        "experts": moes[0].num_experts if moes else 0,
        "top-k": tally.top_k[0] if tally.top_k else None,
        "router": f"{r.kind}, layout {r.layout}, supervision {r.supervision}, map {r.combination_map}",
        "missing fill": run.cfg.model.fill,
        "combinations in training": f"{len(seen)} of {C}",
        "multimoe version": __version__,
    }
    for i, note in enumerate(notes):
        items[f"note {i + 1}"] = note
    frames["summary"] = pd.DataFrame({"item": list(items), "value": list(items.values())})
    return frames


def routing_report_frames(
    run_dir: str | Path, overrides: list[str] | None = None, table: Table | None = None
) -> dict[str, pd.DataFrame]:
    """The routing report's statistics of a run's best model on its test split, as data frames:

    ``summary`` (item, value), ``metrics`` (accuracy, F1, AUC and sample counts per combination),
    ``metrics_by_size`` (the same pooled by the number of observed modalities),
    ``activation_combination`` / ``activation_modality`` (share of each group's routing per expert; rows sum to 1),
    ``routing_combination`` / ``routing_modality`` (own-expert shares, router and usage entropy), ``load`` and
    ``load_balance`` (per expert; CV), ``bank_pairs`` / ``bank_claim`` / ``bank_by_shared`` / ``bank_rows``
    (Flex-MoE's bank similarity claim; empty without a bank), ``drift`` and ``epochs`` (per-epoch validation routing
    and metrics from the run's logs). ``overrides`` as ``multimoe eval`` (e.g. ``data.missing=mcar:0.5``); ``table``
    for a run trained on an in-memory table."""
    return report_frames(open_run(run_dir, overrides, table))


# ---------------------------------------------------------------------------------------------------------------
# HTML

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


def _routing_sections(page: _Page, frames: dict[str, pd.DataFrame], modalities: list[str]) -> None:
    rc_all, rm_all, bal_all = frames["routing_combination"], frames["routing_modality"], frames["load_balance"]
    layers = sorted(rc_all["layer"].unique())
    for layer in layers:
        sfx, title_sfx = (f"_layer{layer}", f" (MoE layer {layer})") if len(layers) > 1 else ("", "")
        rc = rc_all[rc_all["layer"] == layer]
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
        "initialisation (rebuilt from the seed), the baseline: a correlation the initial bank shows too was not "
        "learned; <b>update</b>: trained minus initial, what training wrote into the bank."
    )
    page.table(claim, "bank_claim")
    page.figure("bank_similarity", figs.bank_similarity_plot(pairs, claim, frames["bank_by_shared"]), "bank similarity")
    page.table(frames["bank_by_shared"], "bank_by_shared")
    fill = "update" if "cosine_update" in pairs else "trained"
    page.p(
        f"Per modality, the cosine between the {'updates (trained - initial)' if fill == 'update' else 'fills'} of "
        "every two trained combinations lacking it; every pair is in the frame <code>bank_pairs</code>. Trained fills "
        "that stay close to their random initialisation (see how far they moved, below) look like noise; their "
        "updates show what training wrote."
    )
    page.figure("bank_matrices", figs.bank_matrices(pairs, modalities, fill), f"bank cosine matrices ({fill})")
    rows = frames["bank_rows"]
    if "relative_update" in rows:
        read = rows[rows["train_samples"] > 0]
        page.p(
            f"Fills read in training moved by a median {format_cell(float(read['relative_update'].median()))} of "
            f"their initial norm (cosine to their initial value: median "
            f"{format_cell(float(read['cosine_to_init'].median()))})."
        )
    page.table(rows, "bank_rows", fold=f"Bank fills ({len(rows)} readable rows)")


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
        c = claim.set_index("fill")
        text = f"Bank similarity vs shared modalities, Spearman [95 % CI]: trained {_ci(c.loc['trained'], 'spearman')}"
        if "update" in c.index:
            text += f"; init {_ci(c.loc['init'], 'spearman')}; update {_ci(c.loc['update'], 'spearman')}"
        out.append(text + f" ({int(c.loc['trained', 'pairs'])} pairs).")
    drift = frames["drift"]
    for stat, what in (("own_weight", "own-expert gate share"), ("load_cv", "load CV")):
        d = drift[(drift["stat"] == stat) & (drift["layer"] == 0)] if not drift.empty else drift
        if len(d) > 1:
            out.append(
                f"Validation {what} over training: {format_cell(d['value'].iloc[0])} (epoch {d['epoch'].iloc[0] + 1})"
                f" to {format_cell(d['value'].iloc[-1])} (epoch {d['epoch'].iloc[-1] + 1})."
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
        _routing_sections(page, frames, modalities)
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
            figs.drift_plot(drift, frames["epochs"], None if best is None else int(best) - 1, select),
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
    if out_dir is None:
        same = run.missing == run.cfg.data.missing
        out_dir = run.run_dir / ("report" if same else f"report-{run.missing.replace(':', '')}")
    return save_report(report_frames(run), out_dir)
