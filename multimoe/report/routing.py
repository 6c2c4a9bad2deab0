"""Routing statistics: which experts serve which modality combinations and modalities, how decided the router is and
how balanced the load — on a data split, and per epoch from a run's validation routing log (drift).

Shape letters: the legend in ``multimoe/__init__.py`` (T tokens, K experts per token, E experts, M modalities,
S = 2^M - 1 combinations, G groups of tokens: combinations, or (modality, observed) pairs, G = 2M).

Definitions (the report and its tests rely on them; every share row sums to 1 over the experts):
- slot share of expert e in a group: the share of the group's (token, top-k slot) assignments that go to e, i.e. the
  fraction of the group's tokens whose top-k includes e, divided by K ("fraction of tokens routed to e");
- gate-weight share: the share of the group's gate weight (each token's k weights sum to 1) that e receives;
- mean weight: the mean gate weight of e's assignments in the group (Conf-SMoE: the mean confidence of e's outputs,
  whose k weights per token do not sum to 1; I2MoE: the mean interaction weight, every token weighing all experts);
- top-1 share: the share of the group's tokens whose highest-scoring expert is e;
- own expert (combination supervision, Flex-MoE's S-router): combination c's target expert (``combination_targets``);
  own top-1 / own top-k = share of c's tokens whose top-1 is / whose top-k includes that expert. The full set's
  target is only nominal: its tokens are trained for balance (G-router), not towards an expert;
- router entropy: the mean over a group's tokens of the entropy of the softmax of the router scores over all
  experts (how decided each token's routing is); usage entropy: the entropy of the group's gate-weight shares (how
  many experts the group spreads over; its exponential is the effective number of experts). Natural logarithms; the
  maximum is log E. Usage entropy uses gate weights because the per-epoch log records gate weights only;
- load CV: population std / mean of the top-k slot counts over experts (0 = perfectly balanced), and the same of
  the gate-weight sums ("importance", Shazeer et al. 2017).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from multimoe.batch import combination_name, combinations

SHARES = ("slot_share", "weight_share", "top1_share")


def presence_table(num_modalities: int) -> Tensor:
    """S x M bool: which modalities each combination observes (published order)."""
    present_SM = torch.zeros(len(combinations(num_modalities)), num_modalities, dtype=torch.bool)
    for c, combo in enumerate(combinations(num_modalities)):
        present_SM[c, list(combo)] = True
    return present_SM


def _entropy(p_GE: np.ndarray) -> np.ndarray:
    """Row entropies (nats) of rows that sum to 1; 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p_GE > 0, p_GE * np.log(p_GE), 0.0).sum(axis=1)


def _shares(counts_GE: np.ndarray) -> np.ndarray:
    """Rows normalised to sum to 1 (NaN rows where the group has no tokens)."""
    total_G = counts_GE.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total_G > 0, counts_GE / total_G, np.nan)


class _GroupTally:
    """Per-group sums over batches: slot counts, gate weights, top-1 counts per expert, tokens, router entropy."""

    def __init__(self, num_groups: int, num_experts: int) -> None:
        G, E = num_groups, num_experts
        self.slots_GE = np.zeros((G, E))
        self.weight_GE = np.zeros((G, E))
        self.top1_GE = np.zeros((G, E))
        self.tokens_G = np.zeros(G)
        self.router_entropy_G = np.zeros(G)  # sum over tokens

    def add(self, group_T: Tensor, ids_TK: Tensor, weights_TK: Tensor, entropy_T: Tensor) -> None:
        G, E = self.slots_GE.shape
        flat_R = (group_T[:, None] * E + ids_TK).reshape(-1)
        self.slots_GE += torch.bincount(flat_R, minlength=G * E).view(G, E).double().numpy()
        w_R = weights_TK.reshape(-1).double()
        self.weight_GE += torch.bincount(flat_R, weights=w_R, minlength=G * E).view(G, E).numpy()
        self.top1_GE += torch.bincount(group_T * E + ids_TK[:, 0], minlength=G * E).view(G, E).double().numpy()
        self.tokens_G += torch.bincount(group_T, minlength=G).double().numpy()
        self.router_entropy_G += torch.bincount(group_T, weights=entropy_T.double(), minlength=G).numpy()


class RoutingTally:
    """Sums, per MoE layer, of the routing of every token: pass ``update`` as ``predict(..., on_output=...)``.

    Tokens are grouped by their sample's combination and by (their modality, whether it was observed or filled)."""

    def __init__(self, num_modalities: int) -> None:
        self.num_modalities = num_modalities
        self.present_SM = presence_table(num_modalities)
        self.layers: list[tuple[_GroupTally, _GroupTally]] = []  # (by combination, by modality x observed)
        self.top_k: list[int] = []

    @torch.no_grad()
    def update(self, out, batch=None) -> None:
        """Add one batch's ``ModelOutput`` (its ``moe`` layers and token ``info``)."""
        if not out.moe:  # no MoE layer (dense feed-forward, late fusion): nothing is routed
            return
        for i, moe_out in enumerate(out.moe):
            info = moe_out.info or out.info  # a layer may route its own tokens (a subset, a retriever's)
            combo_T, modality_T = info.combo_T.cpu(), info.modality_T.cpu()
            observed_T = self.present_SM[combo_T, modality_T]
            state_T = modality_T * 2 + observed_T.long()
            r = moe_out.routing
            ids_TK, weights_TK = r.ids_TK.cpu(), r.weights_TK.detach().float().cpu()
            p_TE = r.logits_TE.detach().float().softmax(dim=1)  # -inf outside a disjoint pool: p = 0
            entropy_T = -(p_TE * p_TE.clamp(min=1e-30).log()).sum(dim=1).cpu()
            if i == len(self.layers):
                E = r.logits_TE.shape[1]
                self.layers.append((_GroupTally(len(self.present_SM), E), _GroupTally(2 * self.num_modalities, E)))
                self.top_k.append(ids_TK.shape[1])
            by_combo, by_state = self.layers[i]
            by_combo.add(combo_T, ids_TK, weights_TK, entropy_T)
            by_state.add(state_T, ids_TK, weights_TK, entropy_T)


def _group_rows(tally: _GroupTally) -> dict[str, np.ndarray]:
    shares = {
        "slot_share": _shares(tally.slots_GE),
        "weight_share": _shares(tally.weight_GE),
        "top1_share": _shares(tally.top1_GE),
    }
    with np.errstate(divide="ignore", invalid="ignore"):
        router_entropy = np.where(tally.tokens_G > 0, tally.router_entropy_G / tally.tokens_G, np.nan)
        shares["mean_weight"] = np.where(tally.slots_GE > 0, tally.weight_GE / tally.slots_GE, np.nan)
    usage = np.where(tally.tokens_G > 0, _entropy(np.nan_to_num(shares["weight_share"])), np.nan)
    return {**shares, "router_entropy": router_entropy, "usage_entropy": usage}


def _activation_frame(keys: pd.DataFrame, stats: dict[str, np.ndarray], layer: int) -> pd.DataFrame:
    """Long format: one row per (group, expert) of the groups that have tokens."""
    G, E = stats["slot_share"].shape
    frame = keys.loc[keys.index.repeat(E)].reset_index(drop=True)
    frame.insert(0, "layer", layer)
    frame["expert"] = np.tile(np.arange(E), G)
    for name in (*SHARES, "mean_weight"):
        frame[name] = stats[name].reshape(-1)
    has = np.repeat(keys["tokens"].to_numpy() > 0, E)
    return frame[has].drop(columns="tokens").reset_index(drop=True)


def _entropy_columns(frame: pd.DataFrame, stats: dict[str, np.ndarray], layer: int) -> pd.DataFrame:
    frame = frame.copy()
    frame.insert(0, "layer", layer)
    frame["router_entropy"] = stats["router_entropy"]
    frame["usage_entropy"] = stats["usage_entropy"]
    frame["effective_experts"] = np.exp(stats["usage_entropy"])
    return frame


def _combination_frames(by_combo: _GroupTally, modalities: list[str], target_S, K: int, layer: int):
    """Activation and routing by combination (own expert under combination supervision)."""
    combos = combinations(len(modalities))
    keys = pd.DataFrame(
        {
            "combination": [combination_name(c, modalities) for c in combos],
            "index": np.arange(len(combos)),
            "size": [len(c) for c in combos],
            "tokens": by_combo.tokens_G.astype(np.int64),
        }
    )
    stats = _group_rows(by_combo)
    routing = _entropy_columns(keys, stats, layer)
    if target_S is not None:
        rows = np.arange(len(combos))
        at = routing.columns.get_loc("router_entropy")
        routing.insert(at, "own_expert", target_S)
        routing.insert(at + 1, "own_top1", stats["top1_share"][rows, target_S])
        routing.insert(at + 2, "own_topk", stats["slot_share"][rows, target_S] * K)  # tokens whose top-k has it
        routing.insert(at + 3, "own_weight", stats["weight_share"][rows, target_S])
    return _activation_frame(keys, stats, layer), routing[routing["tokens"] > 0]


def _modality_frames(by_state: _GroupTally, modalities: list[str], layer: int):
    """Activation and routing by (modality, observed or filled); observed modalities first, then fills."""
    M = len(modalities)
    keys = pd.DataFrame(
        {
            "modality": np.repeat(modalities, 2),
            "observed": np.tile([False, True], M),
            "tokens": by_state.tokens_G.astype(np.int64),
        }
    )
    observed = keys["observed"].to_numpy()
    order = np.concatenate([np.flatnonzero(observed), np.flatnonzero(~observed)])  # each part in modality order
    stats = {k: v[order] for k, v in _group_rows(by_state).items()}
    keys = keys.iloc[order].reset_index(drop=True)
    routing = _entropy_columns(keys, stats, layer)
    return _activation_frame(keys, stats, layer), routing[routing["tokens"] > 0]


def _load_frames(by_combo: _GroupTally, names: list[str], target_S, K: int, layer: int):
    """Per expert (slots, importance, the combination it is the target of), and the balance over experts."""
    slots_E = by_combo.slots_GE.sum(axis=0)
    importance_E = by_combo.weight_GE.sum(axis=0)
    E = len(slots_E)
    targeted = [""] * E
    for c, e in enumerate(target_S if target_S is not None else []):
        targeted[e] = "; ".join(filter(None, [targeted[e], names[c]]))
    load = pd.DataFrame(
        {
            "layer": layer,
            "expert": np.arange(E),
            "slots": slots_E.astype(np.int64),
            "slot_share": slots_E / max(slots_E.sum(), 1),
            "importance": importance_E,
            "target_of": targeted,
        }
    )
    balance = pd.DataFrame(
        {
            "layer": [layer],
            "experts": [E],
            "top_k": [K],
            "tokens": [int(by_combo.tokens_G.sum())],
            "slot_cv": [coefficient_of_variation(slots_E)],
            "importance_cv": [coefficient_of_variation(importance_E)],
            "max_over_mean": [float(slots_E.max() / slots_E.mean()) if slots_E.mean() > 0 else np.nan],
            "unused_experts": [int((slots_E == 0).sum())],
        }
    )
    return load, balance


FRAMES = ("activation_combination", "routing_combination", "activation_modality", "routing_modality", "load",
          "load_balance")  # fmt: skip


def routing_frames(
    tally: RoutingTally, modalities: tuple[str, ...] | list[str], targets: list[Tensor | None]
) -> dict[str, pd.DataFrame]:
    """Data frames of the tallied routing, all with a ``layer`` column (0-based MoE layer):

    - ``activation_combination``: layer, combination, index, size, expert, slot/weight/top-1 shares, mean weight;
    - ``activation_modality``: layer, modality, observed, expert, the same shares and mean weight;
    - ``routing_combination``: layer, combination, index, size, tokens, own expert, own top-1 / top-k share, router
      and usage entropy, effective experts;
    - ``routing_modality``: layer, modality, observed, tokens, router and usage entropy, effective experts;
    - ``load``: layer, expert, slots, slot share, importance (gate-weight sum), the combination targeting it;
    - ``load_balance``: layer, experts, top-k, tokens, slot CV, importance CV, max / mean slots, unused experts.

    ``targets[layer]`` maps combination -> expert under combination supervision (None otherwise).
    """
    modalities = list(modalities)
    names = [combination_name(c, modalities) for c in combinations(len(modalities))]
    parts: dict[str, list[pd.DataFrame]] = {k: [] for k in FRAMES}
    for layer, ((by_combo, by_state), K) in enumerate(zip(tally.layers, tally.top_k)):
        target_S = targets[layer] if layer < len(targets) else None
        target_S = None if target_S is None else target_S.cpu().numpy()
        frames = (
            *_combination_frames(by_combo, modalities, target_S, K, layer),
            *_modality_frames(by_state, modalities, layer),
            *_load_frames(by_combo, names, target_S, K, layer),
        )
        for name, frame in zip(FRAMES, frames):
            parts[name].append(frame)
    return {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in parts.items()}


def coefficient_of_variation(v_E: np.ndarray) -> float:
    """Population std / mean (NaN when the mean is 0)."""
    v_E = np.asarray(v_E, dtype=float)
    mean = v_E.mean()
    return float(v_E.std() / mean) if mean > 0 else float("nan")


def routing_drift(
    records: list[dict], modalities: tuple[str, ...] | list[str], targets: list[Tensor | None]
) -> pd.DataFrame:
    """Per-epoch statistics from a run's ``routing.jsonl`` (validation routing of every epoch), long format:
    epoch, layer, stat, group, value. Stats: ``load_cv`` (slot counts over experts), ``own_weight`` (gate-weight
    share of partial combinations' tokens at their own expert, token-weighted), ``usage_entropy`` per modality and
    the token-weighted mean over combinations (``combinations (mean)``)."""
    modalities = list(modalities)
    rows = []
    for rec in records:
        for layer, stats in enumerate(rec.get("layers", [])):
            epoch = int(rec["epoch"])
            rows.append((epoch, layer, "load_cv", "all", coefficient_of_variation(stats["tokens_per_expert"])))
            w_SE = np.asarray(stats["combination_weight"], dtype=float)
            tokens_S = w_SE.sum(axis=1)
            target_S = targets[layer] if layer < len(targets) else None
            if target_S is not None and tokens_S[1:].sum() > 0:
                t = target_S.cpu().numpy()
                own = w_SE[np.arange(1, len(t)), t[1:]].sum() / tokens_S[1:].sum()
                rows.append((epoch, layer, "own_weight", "partial combinations", float(own)))
            seen = tokens_S > 0
            if seen.any():
                h_S = _entropy(_shares(w_SE[seen]))
                rows.append(
                    (
                        epoch,
                        layer,
                        "usage_entropy",
                        "combinations (mean)",
                        float((h_S * tokens_S[seen]).sum() / tokens_S[seen].sum()),
                    )
                )
            w_ME = np.asarray(stats["modality_weight"], dtype=float)
            for m, h in zip(modalities, _entropy(np.nan_to_num(_shares(w_ME)))):
                rows.append((epoch, layer, "usage_entropy", m, float(h)))
    return pd.DataFrame(rows, columns=["epoch", "layer", "stat", "group", "value"])
