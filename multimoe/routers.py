"""Token routers: each token picks top-k experts and their gate weights.

Shapes: T tokens, D width, E experts, K experts per token.
A router returns a ``Routing`` (weights, ids, logits and the per-token load estimate); aux losses are computed
from it in ``gate_losses``, never stored on the module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multimoe.config import RouterConfig

NOISE_EPSILON = 1e-2  # minimum noise std of the noisy gate (Shazeer et al. 2017)


@dataclass
class Routing:
    weights_TK: Tensor  # gate weights of the chosen experts, summing to 1 per token
    ids_TK: Tensor  # chosen experts, by descending score
    logits_TE: Tensor  # the scores the top-k was taken from (noisy during training for the noisy gate)
    load_TE: Tensor  # P(expert in the token's top-k): differentiable for the noisy gate in training, else 0/1

    def dense_weights(self) -> Tensor:
        """T x E gate weights, zero outside each token's top-k."""
        return torch.zeros_like(self.logits_TE).scatter(1, self.ids_TK, self.weights_TK)


def _init_gate(weight: Tensor) -> None:
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # nn.Linear's default


def _indicator_load(ids_TK: Tensor, num_experts: int, like: Tensor) -> Tensor:
    return torch.zeros(ids_TK.shape[0], num_experts, dtype=like.dtype, device=like.device).scatter(1, ids_TK, 1.0)


class SoftmaxTopK(nn.Module):
    """Linear scores, top-k, softmax over the k chosen scores."""

    def __init__(self, dim: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.weight_ED = nn.Parameter(torch.empty(num_experts, dim))
        _init_gate(self.weight_ED)

    def forward(self, x_TD: Tensor) -> Routing:
        logits_TE = x_TD @ self.weight_ED.t()
        top_vals_TK, ids_TK = logits_TE.topk(self.top_k, dim=1)
        weights_TK = top_vals_TK.softmax(dim=1)
        return Routing(weights_TK, ids_TK, logits_TE, _indicator_load(ids_TK, self.num_experts, logits_TE))


class NoisyTopK(nn.Module):
    """Noisy top-k gating (Shazeer et al. 2017), Flex-MoE's gate: clean logits x W_g, plus in training
    N(0, 1) * (softplus(x W_noise) + 0.01); softmax over the top-k logits. The load estimate is the smooth
    probability that each expert lands in the top-k under the noise."""

    def __init__(self, dim: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.weight_ED = nn.Parameter(torch.empty(num_experts, dim))
        self.noise_ED = nn.Parameter(torch.empty(num_experts, dim))
        _init_gate(self.weight_ED)
        _init_gate(self.noise_ED)

    def forward(self, x_TD: Tensor) -> Routing:
        clean_TE = x_TD @ self.weight_ED.t()
        if not self.training:
            top_vals_TK, ids_TK = clean_TE.topk(self.top_k, dim=1)
            load = _indicator_load(ids_TK, self.num_experts, clean_TE)
            return Routing(top_vals_TK.softmax(dim=1), ids_TK, clean_TE, load)
        std_TE = F.softplus(x_TD @ self.noise_ED.t()) + NOISE_EPSILON
        noisy_TE = clean_TE + torch.randn_like(clean_TE) * std_TE
        k1 = min(self.top_k + 1, self.num_experts)
        top_vals, top_ids = noisy_TE.topk(k1, dim=1)
        ids_TK = top_ids[:, : self.top_k]
        weights_TK = top_vals[:, : self.top_k].softmax(dim=1)
        if self.top_k < self.num_experts:
            load = _prob_in_top_k(clean_TE, noisy_TE, std_TE, top_vals, self.top_k)
        else:
            load = _indicator_load(ids_TK, self.num_experts, clean_TE)
        return Routing(weights_TK, ids_TK, noisy_TE, load)


def _prob_in_top_k(clean_TE: Tensor, noisy_TE: Tensor, std_TE: Tensor, top_vals: Tensor, k: int) -> Tensor:
    """P(expert e stays in the top-k when its own noise is redrawn), Shazeer et al. 2017, appendix A."""
    threshold_if_in = top_vals[:, k : k + 1]  # e is in: it must beat the (k+1)-th value
    threshold_if_out = top_vals[:, k - 1 : k]  # e is out: it must beat the k-th value
    is_in = noisy_TE > threshold_if_in
    prob_if_in = torch.special.ndtr((clean_TE - threshold_if_in) / std_TE)
    prob_if_out = torch.special.ndtr((clean_TE - threshold_if_out) / std_TE)
    return torch.where(is_in, prob_if_in, prob_if_out)


ROUTERS: dict[str, type[nn.Module]] = {"softmax_topk": SoftmaxTopK, "noisy_topk": NoisyTopK}


def build_router(cfg: RouterConfig, dim: int, num_experts: int) -> nn.Module:
    if cfg.kind not in ROUTERS:
        raise ValueError(f"unknown router {cfg.kind!r}; choose one of: {', '.join(ROUTERS)}")
    if not 1 <= cfg.top_k <= num_experts:
        raise ValueError(f"model.moe.router.top_k={cfg.top_k} must be between 1 and the {num_experts} experts")
    return ROUTERS[cfg.kind](dim, num_experts, cfg.top_k)
