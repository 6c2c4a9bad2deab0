"""The routing report's statistics of a trained run, as pandas data frames, on its test split.

The model is the run's best checkpoint; the splits are rebuilt from the run's seed (``runs.reopen.open_run``), so
the test split is the one the run was tested on, optionally under another missingness protocol
(``data.missing=...``). Definitions: ``routing`` (activation, own expert, entropy, load) and ``bank`` (Flex-MoE's
claim that fills of combinations sharing more modalities are more similar).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from multimoe.batch import combination_name, num_combinations
from multimoe.blend import Blend
from multimoe.config import ConfigError
from multimoe.data.table import Table
from multimoe.evaluate import metrics_from_predictions, predict
from multimoe.missing import BankFill
from multimoe.model import build_model
from multimoe.moe import MoE
from multimoe.report.bank import bank_pairs, bank_rows, claim_frames, never_read_factor
from multimoe.report.routing import RoutingTally, routing_drift, routing_frames
from multimoe.runs.checkpoint import read_meta
from multimoe.runs.reopen import OpenRun, open_run
from multimoe.version import __version__

BOOTSTRAP_RESAMPLES = 1000
ROUTING = {  # the report's reading of architectures whose routing is not a router's top-k gate weights
    "i2moe": "I2MoE's reweighting MLP: every sample weighs all M + 2 interaction experts (0..M-1 uniqueness per "
    "modality, M synergy, M + 1 redundancy); gate weights are its interaction weights",
    "confsmoe": "Conf-SMoE: noisy top-k of the observed modalities' tokens; gate weights are the experts' confidences",
    "moe_retriever": "MoE-Retriever's retriever: noisy top-k among the missing modality's and the shared experts, on "
    "the tokens of each retrieval (the supporting group's and the sample's own inputs)",
}


def network(run: OpenRun) -> torch.nn.Module:
    """The run's network (of a blend with gradient boosting, model.blend: its network)."""
    return getattr(run.model, "network", run.model)


def bank_networks(run: OpenRun, net: torch.nn.Module | None = None) -> list[torch.nn.Module]:
    """The networks whose banks the report reads: the run's network (or ``net``, one built as it was), or an
    ensemble's members (model.members)."""
    net = network(run) if net is None else net
    return list(net.members) if run.cfg.model.members > 1 else [net]


def initial_banks(run: OpenRun) -> list[tuple[np.ndarray, float] | None]:
    """Per network of ``bank_networks``, its bank at initialisation, rebuilt from the run's seed as ``train`` builds
    the model (an ensemble's members one after the other), times the factor by which weight decay shrank the rows
    training never reads (``never_read_factor``), and that factor; None where no factor fits those rows (then it is
    not the run's initialisation)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.cfg.seed)
        built = build_model(run.cfg.model, run.splits.schema)
    M = run.splits.schema.num_modalities
    inits = []
    for net, fresh in zip(bank_networks(run), bank_networks(run, built)):
        trained, init = net.fill.bank_SMPD.detach().cpu().numpy(), fresh.fill.bank_SMPD.detach().numpy()
        f = never_read_factor(trained, init, M)
        inits.append(None if f is None else (init * np.float32(f), f))
    return inits


def _bank_frames(run: OpenRun, train_count_S: np.ndarray, notes: list[str]) -> dict[str, pd.DataFrame]:
    """The bank-similarity frames (multimoe.report.bank) of the run's bank, or of each member's bank with a
    ``member`` column (0-based, as the routing frames')."""
    empty = {k: pd.DataFrame() for k in ("bank_pairs", "bank_claim", "bank_by_shared", "bank_rows")}
    nets = bank_networks(run)
    if not isinstance(getattr(nets[0], "fill", None), BankFill):
        notes.append(f"the model has no missing-modality bank (model.fill={run.cfg.model.fill}): no bank similarity")
        return empty
    modalities = run.splits.schema.modalities
    rebuilt = initial_banks(run)
    if any(r is None for r in rebuilt):
        notes.append("the bank's initialisation could not be rebuilt (the rows training never reads are no multiple "
                     "of it): no init baseline")  # fmt: skip
    factors = [r[1] for r in rebuilt if r is not None]
    if factors and min(factors) != 1:
        low, high = f"{min(factors):.4f}", f"{max(factors):.4f}"
        notes.append(f"weight decay shrank the bank rows training never reads by a factor {low}"
                     + (f" to {high}" if high != low else "") + ": the init baseline is the rebuilt initialisation "
                     "times it, so the update holds what the gradients wrote")  # fmt: skip
    inits = [None if r is None else r[0] for r in rebuilt]
    seen_S = train_count_S > 0
    S = len(train_count_S)
    if seen_S.all():
        notes.append(f"bank similarity: all {S} combinations occur in the training split")
    else:
        listed = "seen" if seen_S.sum() <= (~seen_S).sum() else "never seen"
        names = [combination_name(int(c), list(modalities)) for c in np.flatnonzero(seen_S == (listed == "seen"))]
        notes.append(
            f"bank similarity uses only the {int(seen_S.sum())} of {S} combinations that occur in the training split "
            f"({listed} in training: {', '.join(names)}); the rows of the others are never read and stay at their "
            "N(0, 1) initialisation"
        )
    if len(nets) > 1:
        notes.append(f"an ensemble of {len(nets)} models (model.members): one bank per member, each tested on its own")
    per_member = []
    for net, init in zip(nets, inits):
        bank = net.fill.bank_SMPD.detach().cpu().numpy()
        pairs = bank_pairs(bank, modalities, train_count_S, init)
        per_member.append({"bank_pairs": pairs, **claim_frames(pairs, BOOTSTRAP_RESAMPLES, seed=run.cfg.seed),
                           "bank_rows": bank_rows(bank, modalities, train_count_S, init)})  # fmt: skip
    if per_member[0]["bank_pairs"].empty:
        notes.append("no two trained combinations lack the same modality: the bank-similarity claim cannot be tested")
    if len(nets) == 1:
        return per_member[0]
    return {
        name: pd.concat([f[name].assign(member=i) for i, f in enumerate(per_member)], ignore_index=True)[
            ["member", *per_member[0][name].columns]
        ]
        for name in empty
    }


def report_frames(run: OpenRun) -> dict[str, pd.DataFrame]:
    """The report's data frames for an opened run (see ``routing_report_frames``)."""
    if not isinstance(run.model, torch.nn.Module):
        raise ConfigError(
            f"{run.run_dir} is a scikit-learn baseline run ({run.cfg.model.arch}): it has no routing to report; "
            "`multimoe eval` gives its metrics"
        )
    schema = run.splits.schema
    M, S = schema.num_modalities, num_combinations(schema.num_modalities)
    tally = RoutingTally(M)
    pred = predict(run.model, run.splits.test, run.batch_size, run.device, on_output=tally.update)
    result = metrics_from_predictions(pred, schema.modalities)
    train_count_S = np.bincount(run.splits.train.combo_N.numpy(), minlength=S)
    moes = [m for m in run.model.modules() if isinstance(m, MoE)]
    targets = [m.targets_S if m.supervision == "combination" else None for m in moes]
    notes: list[str] = []
    frames = routing_frames(tally, schema.modalities, targets)
    if not tally.layers:
        notes.append("the model has no MoE layer (model.ffn=dense): no routing statistics")

    metrics = pd.DataFrame(
        result["per_combination"], columns=["combination", "index", "size", "n", "accuracy", "f1", "auc"]
    )
    metrics.insert(3, "train_samples", train_count_S[metrics["index"].to_numpy()].astype(np.int64))
    frames["metrics"] = metrics
    frames["metrics_by_size"] = pd.DataFrame(result["per_size"], columns=["size", "n", "accuracy", "f1", "auc"])

    frames.update(_bank_frames(run, train_count_S, notes))

    frames["drift"] = routing_drift(run.folder.read_log("routing"), schema.modalities, targets)
    frames["epochs"] = pd.DataFrame(run.folder.read_log("metrics"))
    if frames["drift"].empty:
        notes.append("the run logged no per-epoch routing (routing.jsonl): no routing drift")
    members = run.cfg.model.members
    if members > 1 and tally.layers:  # an ensemble lists its members' MoE layers one member after the other
        per_member = len(tally.layers) // members
        for frame in frames.values():
            if "layer" in frame.columns:
                frame.insert(int(frame.columns.get_loc("layer")), "member", frame["layer"] // per_member)

    best_epoch = read_meta(run.folder.best).get("epoch")  # the epoch of the evaluated weights
    o = result["overall"]
    r, gate = run.cfg.model.moe.router, run.cfg.model.moe.gate_loss
    seen = [combination_name(int(c), list(schema.modalities)) for c in np.flatnonzero(train_count_S)]
    items = {
        "run": run.run_dir.name,
        "dataset": run.cfg.data.name if run.cfg.data.spec is None else run.cfg.data.spec,
        "method": run.cfg.method,
        "seed": run.cfg.seed,
        "trained under": run.cfg.data.missing,
        "evaluated under": run.missing,
        "best epoch": best_epoch,
        "selected on": f"validation {run.cfg.train.select}",
        "modalities": ", ".join(schema.modalities),
        "test samples": o["n"],
        "test accuracy": o["accuracy"],
        "test macro F1": o["f1"],
        "test AUC": o["auc"],
        "architecture": run.cfg.model.arch,
        "blend": run.model.describe() + "; the test metrics are the blend's, the routing its network's"
        if isinstance(run.model, Blend)
        else "none",
        "MoE layers": len(tally.layers) if members == 1 else f"{len(tally.layers)} ({members} members)",
        "experts": tally.layers[0][0].slots_GE.shape[1] if tally.layers else 0,
        "top-k": tally.top_k[0] if tally.top_k else None,
        "router": ROUTING.get(run.cfg.model.arch)
        or f"{r.kind}, layout {r.layout}, supervision {gate.supervision}, map {gate.combination_map}",
        "missing fill": run.cfg.model.fill,
        "combinations in training": f"{len(seen)} of {S}",
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
