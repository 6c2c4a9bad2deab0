"""Router losses computed from a ``Routing``: load balance (Shazeer 2017) and Flex-MoE's combination supervision.

Shape letters: the legend in ``multimoe/__init__.py`` (T tokens, E experts, M modalities, S = 2^M - 1
combinations, G groups of tokens).

Flex-MoE (METHODS.md §1) has one gate whose loss depends on each token's sample. Its public code calls the MoE
once per modality and sums the per-call losses; multimoe routes all tokens in one call and computes the same
per-modality terms from each token's modality id, so the loss keeps the published scale.

- generalization (tokens of full-modality samples): cv²(importance) + cv²(load) over all experts;
- specialization (tokens of partial samples): cross-entropy between the gate's logits over all experts and the
  sample's target expert (combination c -> expert c), plus a balance loss over the *other* experts:
  ``exclude="own"`` (the paper) drops each combination's own expert, computed per (modality, combination) group
  and averaged over the combinations in the batch; ``exclude="expert0"`` (the public code) drops expert 0.

FuseMoE's entropy regularizer: mean over modalities of H(p̄_m) minus H(mean of p̄_m), p̄_m the mean routing
distribution of modality m's tokens: confident within a modality, diverse across modalities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from multimoe.routers import Routing

EPS = 1e-10


def cv_squared(v_GE: Tensor, keep_GE: Tensor | None = None) -> Tensor:
    """Squared coefficient of variation over the last dimension, Var/Mean² (unbiased variance, as Shazeer's
    reference), over the kept entries (``keep_GE`` broadcasts against ``v_GE``); 0 for rows with fewer than two
    kept entries or all zeros."""
    if keep_GE is None:
        n = v_GE.shape[-1]
        if n < 2:
            return v_GE.new_zeros(v_GE.shape[:-1])
        return v_GE.var(dim=-1) / (v_GE.mean(dim=-1) ** 2 + EPS)
    keep = keep_GE.to(v_GE.dtype)
    n = keep.sum(dim=-1)
    mean = (v_GE * keep).sum(dim=-1) / n.clamp(min=1)
    var = (((v_GE - mean.unsqueeze(-1)) ** 2) * keep).sum(dim=-1) / (n - 1).clamp(min=1)
    return torch.where(n > 1, var / (mean**2 + EPS), torch.zeros_like(var))


def count(group_T: Tensor, num_groups: int) -> Tensor:
    """Tokens per group: ``bincount`` with a static output shape (so that torch.compile needs no graph break)."""
    return torch.zeros(num_groups, dtype=torch.long, device=group_T.device).index_add_(
        0, group_T, torch.ones_like(group_T)
    )


def group_sum(values_TE: Tensor, group_T: Tensor, num_groups: int) -> Tensor:
    return values_TE.new_zeros(num_groups, values_TE.shape[1]).index_add(0, group_T, values_TE)


def balance_loss(routing: Routing, group_T: Tensor, num_groups: int, keep_GE: Tensor | None = None) -> Tensor:
    """Per group: cv²(importance) + cv²(load), importance = Σ gate weights, load = Σ P(expert in top-k)."""
    importance_GE = group_sum(routing.dense_weights(), group_T, num_groups)
    load_GE = group_sum(routing.load_TE, group_T, num_groups)
    return cv_squared(importance_GE, keep_GE) + cv_squared(load_GE, keep_GE)


def entropy_loss(routing: Routing, modality_T: Tensor, num_modalities: int) -> Tensor:
    """FuseMoE: mean_m H(p̄_m) - H(mean_m p̄_m), over the full softmax of each token's scores."""
    p_TE = routing.logits_TE.softmax(dim=1)  # exp(-inf) = 0 outside a disjoint pool
    counts_M = count(modality_T, num_modalities).clamp(min=1).to(p_TE.dtype)
    p_ME = group_sum(p_TE, modality_T, num_modalities) / counts_M[:, None]
    p_E = p_ME.mean(dim=0)
    return _entropy(p_ME).mean() - _entropy(p_E[None])[0]


def _entropy(p_GE: Tensor) -> Tensor:
    """Row entropies; the clamp keeps the gradient finite where p = 0 (experts outside a disjoint pool)."""
    return -(p_GE * p_GE.clamp(min=1e-12).log()).sum(dim=1)


def combination_targets(num_combinations: int, num_experts: int, mapping: str, device=None) -> Tensor:
    """Target expert per combination: ``identity`` (Flex-MoE; needs num_experts >= combinations) or ``modulo``."""
    combos = torch.arange(num_combinations, device=device)
    if mapping == "identity":
        if num_combinations > num_experts:
            raise ValueError(
                f"combination_map=identity needs one expert per combination: {num_combinations} combinations, "
                f"{num_experts} experts"
            )
        return combos
    if mapping == "modulo":
        return combos % num_experts
    raise ValueError(f"unknown combination_map {mapping!r}; choose identity or modulo")


def gate_loss(
    routing: Routing,
    combo_T: Tensor,
    modality_T: Tensor,
    num_modalities: int,
    supervision: str,
    exclude: str = "own",
    targets_S: Tensor | None = None,
    pool_ME: Tensor | None = None,
) -> Tensor:
    """The router loss of one MoE layer (a scalar), summed over modalities as the published per-modality calls.
    ``pool_ME`` restricts each modality's balance to its own expert pool (disjoint layout)."""
    M = num_modalities
    if supervision == "none":
        return routing.logits_TE.new_zeros(())
    if supervision == "balance":
        return balance_loss(routing, modality_T, M, pool_ME).sum()
    if supervision == "entropy":
        return entropy_loss(routing, modality_T, M)
    if supervision != "combination":
        raise ValueError(f"unknown router supervision {supervision!r}; choose combination, balance, entropy or none")
    if targets_S is None:
        raise ValueError("combination supervision needs the combination -> expert targets")
    E = routing.logits_TE.shape[1]
    full_T = combo_T == 0

    # All balance terms in one grouped pass (each token belongs to exactly one group, so this is the per-group
    # masked sum of the published per-modality calls, with far fewer kernels): groups [0, M) hold the
    # full-modality tokens of each modality, balanced over all experts (generalization); the groups after them
    # hold the partial tokens, by (modality, combination) for "own", by modality for "expert0" (specialization).
    if exclude == "own":
        S = targets_S.shape[0]
        group_T = torch.where(full_T, modality_T, M + modality_T * S + combo_T)
    elif exclude == "expert0":
        group_T = torch.where(full_T, modality_T, M + modality_T)
    else:
        raise ValueError(f"unknown balance_exclude {exclude!r}; choose own or expert0")
    keep_G1E = _balance_keep(exclude, M, E, targets_S)
    G = keep_G1E.shape[0]
    # importance (gate weights) and load side by side: one grouped sum, one cv² for both
    stats_TE2 = torch.stack([routing.dense_weights(), routing.load_TE], dim=2)
    stats_G2E = group_sum(stats_TE2.view(-1, 2 * E), group_T, G).view(-1, E, 2).transpose(1, 2)
    balance_G = cv_squared(stats_G2E, keep_G1E).sum(dim=1)

    # generalization: full-modality tokens, balance over all experts
    loss = balance_G[:M].sum()

    # specialization: cross-entropy to the combination's expert (mean over partial tokens, per modality)
    ce_sum = F.cross_entropy(routing.logits_TE, torch.where(full_T, -100, targets_S[combo_T]), reduction="sum")
    loss = loss + M * ce_sum / (~full_T).sum().clamp(min=1)

    if exclude == "expert0":
        return loss + balance_G[M:].sum()
    has_MS = (count(group_T, G)[M:] > 0).view(M, S).to(balance_G.dtype)  # (modality, combination) groups present
    per_modality = (balance_G[M:].view(M, S) * has_MS).sum(dim=1) / has_MS.sum(dim=1).clamp(min=1)
    return loss + per_modality.sum()


def _balance_keep(exclude: str, M: int, E: int, targets_S: Tensor) -> Tensor:
    """(G, 1, E) float mask of the experts each group's balance runs over: all for the M full-modality groups;
    for partial tokens all but the combination's own expert ("own", M * S groups) or all but expert 0 ("expert0",
    M groups)."""
    experts_E = torch.arange(E, device=targets_S.device)
    if exclude == "own":
        partial_PE = experts_E[None, :] != targets_S.repeat(M)[:, None]
    else:
        partial_PE = (experts_E != 0)[None, :].expand(M, E)
    return torch.cat([partial_PE.new_ones(M, E), partial_PE]).float()[:, None, :]
