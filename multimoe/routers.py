"""Token routers: each token picks top-k experts and their gate weights.

Shape letters: the legend in ``multimoe/__init__.py`` (T tokens, D width, E experts in all pools, J experts in one
router's pool, K experts per token, G router groups: 1, or M modalities).

A router is a scorer plus a layout:
- scorers: ``softmax_topk`` (linear scores), ``noisy_topk`` (Shazeer et al. 2017; Flex-MoE's gate), ``laplace``
  (FuseMoE: score = -||x - w_e||_2) and ``gaussian`` (FuseMoE: -||x - w_e||^2); top-k of the scores, softmax over
  the k chosen scores;
- layouts (FuseMoE): ``joint`` (one router over all tokens), ``per_modality`` (one router per modality, one shared
  expert pool), ``disjoint`` (one router and one pool of ``num_experts`` experts per modality; E = M x num_experts).

A router returns a ``Routing``; aux losses are computed from it in ``gate_losses``, never stored on the module.
Routers are built through ``multimoe.registry.ROUTERS``; ``top_k``'s range is checked once, where the expert count
is resolved (``multimoe.model.resolve``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NOISE_EPSILON = 1e-2  # minimum noise std of the noisy gate (Shazeer et al. 2017)
Layout = Literal["joint", "per_modality", "disjoint"]


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


def _dot(x_TD: Tensor, weight_GJD: Tensor) -> Tensor:
    """G x T x J dot products x_t . w_gj as one matrix product (an einsum here runs a batched product that costs
    several times as much at router sizes)."""
    G, J, D = weight_GJD.shape
    return F.linear(x_TD, weight_GJD.reshape(G * J, D)).view(-1, G, J).transpose(0, 1)


def _prob_in_top_k(clean_TJ: Tensor, noisy_TJ: Tensor, std_TJ: Tensor, top_vals: Tensor, k: int) -> Tensor:
    """P(expert j stays in the top-k when its own noise is redrawn), Shazeer et al. 2017, appendix A."""
    threshold_if_in = top_vals[:, k : k + 1]  # j is in: it must beat the (k+1)-th value
    threshold_if_out = top_vals[:, k - 1 : k]  # j is out: it must beat the k-th value
    threshold_TJ = torch.where(noisy_TJ > threshold_if_in, threshold_if_in, threshold_if_out)
    return torch.special.ndtr((clean_TJ - threshold_TJ) / std_TJ)  # one ndtr for both cases


class Router(nn.Module):
    """Scores every token with its group's router, then picks the top-k experts."""

    noisy = False

    def __init__(self, dim: int, num_experts: int, top_k: int, layout: Layout = "joint", num_modalities: int = 1):
        super().__init__()
        self.layout, self.top_k = layout, top_k
        self.groups = 1 if layout == "joint" else num_modalities
        self.pool = num_experts  # experts one router chooses among
        self.num_experts = num_experts * (num_modalities if layout == "disjoint" else 1)
        self.weight_GJD = nn.Parameter(torch.empty(self.groups, num_experts, dim))
        for w in self.weight_GJD:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Linear's default

    def scores(self, x_TD: Tensor, weight_GJD: Tensor) -> Tensor:
        """G x T x J scores."""
        return _dot(x_TD, weight_GJD)

    def _select(self, scores_GTJ: Tensor, modality_T: Tensor) -> Tensor:
        """Each token's scores from its group's router (T x J)."""
        if self.groups == 1:
            return scores_GTJ[0]
        T = scores_GTJ.shape[1]
        return scores_GTJ[modality_T, torch.arange(T, device=modality_T.device)]

    def _to_global(self, values_TJ: Tensor, modality_T: Tensor, fill: float = float("-inf")) -> Tensor:
        """Pool-local values -> values over all experts (``fill`` outside the token's pool)."""
        if self.layout != "disjoint":
            return values_TJ
        cols_TJ = (modality_T * self.pool)[:, None] + torch.arange(self.pool, device=modality_T.device)
        return values_TJ.new_full((values_TJ.shape[0], self.num_experts), fill).scatter(1, cols_TJ, values_TJ)

    def _global_ids(self, local_ids_TK: Tensor, modality_T: Tensor) -> Tensor:
        return local_ids_TK if self.layout != "disjoint" else local_ids_TK + (modality_T * self.pool)[:, None]

    def forward(self, x_TD: Tensor, modality_T: Tensor) -> Routing:
        logits_TJ = self._select(self.scores(x_TD, self.weight_GJD), modality_T)
        top_vals_TK, local_ids_TK = logits_TJ.topk(self.top_k, dim=1)
        logits_TE = self._to_global(logits_TJ, modality_T)
        ids_TK = self._global_ids(local_ids_TK, modality_T)
        load = _indicator_load(ids_TK, self.num_experts, logits_TE)
        return Routing(top_vals_TK.softmax(dim=1), ids_TK, logits_TE, load)


class SoftmaxTopK(Router):
    """Linear scores x W, top-k, softmax over the k chosen scores."""


def euclidean(x_TD: Tensor, weight_GJD: Tensor) -> Tensor:
    """G x T x J distances ||x_t - w_gj||_2 as one product of [-2x, |x|^2, 1] and [w, 1, |w|^2]: torch.cdist's
    formula for more than 25 rows (it computes fewer rows directly). Used while exporting, where cdist's choice by
    row count would fix the batch size of the graph."""
    x_norm_T1 = x_TD.pow(2).sum(-1, keepdim=True)
    w_norm_GJ1 = weight_GJD.pow(2).sum(-1, keepdim=True)
    x_TI = torch.cat([x_TD.mul(-2), x_norm_T1, torch.ones_like(x_norm_T1)], -1)
    w_GJI = torch.cat([weight_GJD, torch.ones_like(w_norm_GJ1), w_norm_GJ1], -1)
    return torch.matmul(x_TI, w_GJI.mT).clamp_min(0).sqrt()


class LaplaceTopK(Router):
    """FuseMoE's Laplace gate: score = -||x - w_e||_2 (distance to a learned expert embedding)."""

    def scores(self, x_TD: Tensor, weight_GJD: Tensor) -> Tensor:
        if torch.compiler.is_exporting():
            return -euclidean(x_TD, weight_GJD)
        return -torch.cdist(x_TD.unsqueeze(0).expand(weight_GJD.shape[0], -1, -1), weight_GJD)


class GaussianTopK(Router):
    """FuseMoE's Gaussian gate: score = -||x - w_e||^2."""

    def scores(self, x_TD: Tensor, weight_GJD: Tensor) -> Tensor:
        sq = (x_TD**2).sum(-1)[None, :, None] + (weight_GJD**2).sum(-1)[:, None, :]
        return -(sq - 2 * _dot(x_TD, weight_GJD)).clamp(min=0)


class NoisyTopK(Router):
    """Noisy top-k gating (Shazeer et al. 2017), Flex-MoE's gate: clean logits x W_g, plus in training
    N(0, 1) * (softplus(x W_noise) + 0.01); softmax over the top-k logits. The load estimate is the smooth
    probability that each expert lands in the top-k under the noise."""

    noisy = True

    def __init__(self, dim: int, num_experts: int, top_k: int, layout: Layout = "joint", num_modalities: int = 1):
        super().__init__(dim, num_experts, top_k, layout, num_modalities)
        self.noise_GJD = nn.Parameter(torch.empty_like(self.weight_GJD))
        for w in self.noise_GJD:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))

    def forward(self, x_TD: Tensor, modality_T: Tensor) -> Routing:
        if not self.training:
            return super().forward(x_TD, modality_T)
        clean_TJ = self._select(self.scores(x_TD, self.weight_GJD), modality_T)
        std_TJ = F.softplus(self._select(self.scores(x_TD, self.noise_GJD), modality_T)) + NOISE_EPSILON
        noisy_TJ = clean_TJ + torch.randn_like(clean_TJ) * std_TJ
        k1 = min(self.top_k + 1, self.pool)
        top_vals, top_ids = noisy_TJ.topk(k1, dim=1)
        if self.top_k < self.pool:
            load_TJ = _prob_in_top_k(clean_TJ, noisy_TJ, std_TJ, top_vals, self.top_k)
        else:
            load_TJ = torch.ones_like(clean_TJ)
        logits_TE = self._to_global(noisy_TJ, modality_T)
        load_TE = self._to_global(load_TJ, modality_T, fill=0.0)
        ids_TK = self._global_ids(top_ids[:, : self.top_k], modality_T)
        return Routing(top_vals[:, : self.top_k].softmax(dim=1), ids_TK, logits_TE, load_TE)
