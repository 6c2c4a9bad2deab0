"""Token routers: each token picks top-k experts and their gate weights.

Shapes: T tokens, D width, E experts (all pools), K experts per token, G router groups (1, or M modalities).

A router is a scorer plus a layout:
- scorers: ``softmax_topk`` (linear scores), ``noisy_topk`` (Shazeer et al. 2017; Flex-MoE's gate), ``laplace``
  (FuseMoE: score = -||x - w_e||_2) and ``gaussian`` (FuseMoE: -||x - w_e||^2); top-k of the scores, softmax over
  the k chosen scores;
- layouts (FuseMoE): ``joint`` (one router over all tokens), ``per_modality`` (one router per modality, one shared
  expert pool), ``disjoint`` (one router and one pool of ``num_experts`` experts per modality; E = M x num_experts).

A router returns a ``Routing``; aux losses are computed from it in ``gate_losses``, never stored on the module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multimoe.config import RouterConfig

NOISE_EPSILON = 1e-2  # minimum noise std of the noisy gate (Shazeer et al. 2017)
LAYOUTS = ("joint", "per_modality", "disjoint")


@dataclass
class Routing:
    weights_TK: Tensor  # gate weights of the chosen experts, summing to 1 per token
    ids_TK: Tensor  # chosen experts (global ids), by descending score
    logits_TE: Tensor  # scores the top-k was taken from (noisy in training for the noisy gate; -inf outside a pool)
    load_TE: Tensor  # P(expert in the token's top-k): differentiable for the noisy gate in training, else 0/1

    def dense_weights(self) -> Tensor:
        """T x E gate weights, zero outside each token's top-k."""
        return torch.zeros_like(self.logits_TE).scatter(1, self.ids_TK, self.weights_TK)


def _indicator_load(ids_TK: Tensor, num_experts: int, like: Tensor) -> Tensor:
    return torch.zeros(ids_TK.shape[0], num_experts, dtype=like.dtype, device=like.device).scatter(1, ids_TK, 1.0)


def _dot(x_TD: Tensor, weight_GED: Tensor) -> Tensor:
    """G x T x E dot products x_t . w_ge as one matrix product (an einsum here runs a batched product that costs
    several times as much at router sizes)."""
    G, E, D = weight_GED.shape
    return F.linear(x_TD, weight_GED.reshape(G * E, D)).view(-1, G, E).transpose(0, 1)


def _prob_in_top_k(clean_TE: Tensor, noisy_TE: Tensor, std_TE: Tensor, top_vals: Tensor, k: int) -> Tensor:
    """P(expert e stays in the top-k when its own noise is redrawn), Shazeer et al. 2017, appendix A."""
    threshold_if_in = top_vals[:, k : k + 1]  # e is in: it must beat the (k+1)-th value
    threshold_if_out = top_vals[:, k - 1 : k]  # e is out: it must beat the k-th value
    threshold_TE = torch.where(noisy_TE > threshold_if_in, threshold_if_in, threshold_if_out)
    return torch.special.ndtr((clean_TE - threshold_TE) / std_TE)  # one ndtr for both cases


class Router(nn.Module):
    """Scores every token with its group's router, then picks the top-k experts."""

    noisy = False

    def __init__(self, dim: int, num_experts: int, top_k: int, layout: str = "joint", num_modalities: int = 1):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown router layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
        self.layout, self.top_k = layout, top_k
        self.groups = 1 if layout == "joint" else num_modalities
        self.pool = num_experts  # experts one router chooses among
        self.num_experts = num_experts * (num_modalities if layout == "disjoint" else 1)
        self.weight_GED = nn.Parameter(torch.empty(self.groups, num_experts, dim))
        for w in self.weight_GED:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Linear's default

    def scores(self, x_TD: Tensor, weight_GED: Tensor) -> Tensor:
        """G x T x pool scores."""
        return _dot(x_TD, weight_GED)

    def _select(self, scores_GTE: Tensor, modality_T: Tensor) -> Tensor:
        if self.groups == 1:
            return scores_GTE[0]
        T = scores_GTE.shape[1]
        return scores_GTE[modality_T, torch.arange(T, device=modality_T.device)]

    def _to_global(self, values_TP: Tensor, modality_T: Tensor, fill: float = float("-inf")) -> Tensor:
        """Pool-local values -> values over all experts (``fill`` outside the token's pool)."""
        if self.layout != "disjoint":
            return values_TP
        cols_TP = (modality_T * self.pool)[:, None] + torch.arange(self.pool, device=modality_T.device)
        return values_TP.new_full((values_TP.shape[0], self.num_experts), fill).scatter(1, cols_TP, values_TP)

    def _global_ids(self, local_ids_TK: Tensor, modality_T: Tensor) -> Tensor:
        return local_ids_TK if self.layout != "disjoint" else local_ids_TK + (modality_T * self.pool)[:, None]

    def forward(self, x_TD: Tensor, modality_T: Tensor) -> Routing:
        logits_TP = self._select(self.scores(x_TD, self.weight_GED), modality_T)
        top_vals_TK, local_ids_TK = logits_TP.topk(self.top_k, dim=1)
        logits_TE = self._to_global(logits_TP, modality_T)
        ids_TK = self._global_ids(local_ids_TK, modality_T)
        load = _indicator_load(ids_TK, self.num_experts, logits_TE)
        return Routing(top_vals_TK.softmax(dim=1), ids_TK, logits_TE, load)


class SoftmaxTopK(Router):
    """Linear scores x W, top-k, softmax over the k chosen scores."""


class LaplaceTopK(Router):
    """FuseMoE's Laplace gate: score = -||x - w_e||_2 (distance to a learned expert embedding)."""

    def scores(self, x_TD: Tensor, weight_GED: Tensor) -> Tensor:
        return -torch.cdist(x_TD.unsqueeze(0).expand(weight_GED.shape[0], -1, -1), weight_GED)


class GaussianTopK(Router):
    """FuseMoE's Gaussian gate: score = -||x - w_e||^2."""

    def scores(self, x_TD: Tensor, weight_GED: Tensor) -> Tensor:
        sq = (x_TD**2).sum(-1)[None, :, None] + (weight_GED**2).sum(-1)[:, None, :]
        return -(sq - 2 * _dot(x_TD, weight_GED)).clamp(min=0)


class NoisyTopK(Router):
    """Noisy top-k gating (Shazeer et al. 2017), Flex-MoE's gate: clean logits x W_g, plus in training
    N(0, 1) * (softplus(x W_noise) + 0.01); softmax over the top-k logits. The load estimate is the smooth
    probability that each expert lands in the top-k under the noise."""

    noisy = True

    def __init__(self, dim: int, num_experts: int, top_k: int, layout: str = "joint", num_modalities: int = 1):
        super().__init__(dim, num_experts, top_k, layout, num_modalities)
        self.noise_GED = nn.Parameter(torch.empty_like(self.weight_GED))
        for w in self.noise_GED:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))

    def forward(self, x_TD: Tensor, modality_T: Tensor) -> Routing:
        if not self.training:
            return super().forward(x_TD, modality_T)
        clean_TP = self._select(self.scores(x_TD, self.weight_GED), modality_T)
        std_TP = F.softplus(self._select(self.scores(x_TD, self.noise_GED), modality_T)) + NOISE_EPSILON
        noisy_TP = clean_TP + torch.randn_like(clean_TP) * std_TP
        k1 = min(self.top_k + 1, self.pool)
        top_vals, top_ids = noisy_TP.topk(k1, dim=1)
        if self.top_k < self.pool:
            load_TP = _prob_in_top_k(clean_TP, noisy_TP, std_TP, top_vals, self.top_k)
        else:
            load_TP = torch.ones_like(clean_TP)
        logits_TE = self._to_global(noisy_TP, modality_T)
        load_TE = self._to_global(load_TP, modality_T, fill=0.0)
        ids_TK = self._global_ids(top_ids[:, : self.top_k], modality_T)
        return Routing(top_vals[:, : self.top_k].softmax(dim=1), ids_TK, logits_TE, load_TE)


ROUTERS: dict[str, type[Router]] = {
    "softmax_topk": SoftmaxTopK,
    "noisy_topk": NoisyTopK,
    "laplace": LaplaceTopK,
    "gaussian": GaussianTopK,
}


def build_router(cfg: RouterConfig, dim: int, num_experts: int, num_modalities: int = 1) -> Router:
    """A router over ``num_experts`` experts (per modality pool for the disjoint layout)."""
    if cfg.kind not in ROUTERS:
        raise ValueError(f"unknown router {cfg.kind!r}; choose one of: {', '.join(ROUTERS)}")
    if not 1 <= cfg.top_k <= num_experts:
        raise ValueError(f"model.moe.router.top_k={cfg.top_k} must be between 1 and the {num_experts} experts")
    return ROUTERS[cfg.kind](dim, num_experts, cfg.top_k, cfg.layout, num_modalities)
