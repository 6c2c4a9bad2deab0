"""The sparse MoE feed-forward: one call for all tokens of all modalities, dropless token-choice dispatch.

Shapes: T tokens, D width, H expert hidden width, E experts, K experts per token, R = T*K routed rows.

Dispatch: stable-sort the (token, slot) pairs by expert, gather the tokens into one buffer grouped by expert, run
each expert on its contiguous slice (a grouped matmul where the shapes allow, else one matmul per expert over
``W.unbind(0)``), scale by the gate weights and add each token's k outputs back. Expert weights live in stacked
parameters [E, D, H] and [E, H, D]; no per-expert indexing of a stacked weight inside a loop (that makes every
backward build a full-size gradient per expert).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multimoe.gate_losses import gate_loss
from multimoe.routers import Router, Routing

_HAS_GROUPED_MM = hasattr(F, "grouped_mm")


@dataclass
class TokenInfo:
    """What travels with the tokens so routers and losses can use modality and combination information."""

    modality_T: Tensor  # modality id of each token
    combo_T: Tensor  # combination index of each token's sample
    num_modalities: int


@dataclass
class MoEOutput:
    out_TD: Tensor
    routing: Routing
    tokens_per_expert_E: Tensor
    aux_loss: Tensor


def _grouped_ok(x: Tensor, *weights: Tensor) -> bool:
    if not _HAS_GROUPED_MM or x.dtype not in (torch.float32, torch.bfloat16):
        return False
    align = 16 // x.element_size()
    return all(w.shape[-1] % align == 0 and w.shape[-2] % align == 0 for w in weights)


def _grouped_linear(x_RI: Tensor, w_EIO: Tensor, counts_E: Tensor, offsets_E: Tensor, use_grouped: bool) -> Tensor:
    if use_grouped:
        return F.grouped_mm(x_RI, w_EIO, offs=offsets_E)
    pieces = torch.split(x_RI, counts_E.tolist())
    return torch.cat([p @ w for p, w in zip(pieces, w_EIO.unbind(0))], dim=0)


def expert_ffn(
    x_TD: Tensor,
    ids_TK: Tensor,
    weights_TK: Tensor,
    w1_EDH: Tensor,
    b1_EH: Tensor,
    w2_EHD: Tensor,
    b2_ED: Tensor,
) -> tuple[Tensor, Tensor]:
    """Σ_k weight_k * expert_{id_k}(x) per token (experts: Linear -> GELU -> Linear); also tokens per expert."""
    T, K = ids_TK.shape
    E = w1_EDH.shape[0]
    flat_ids_R = ids_TK.reshape(-1)
    order_R = torch.argsort(flat_ids_R, stable=True)
    sorted_ids_R = flat_ids_R[order_R]
    token_R = order_R // K
    counts_E = torch.bincount(flat_ids_R, minlength=E)
    offsets_E = torch.cumsum(counts_E, 0).to(torch.int32)
    use_grouped = _grouped_ok(x_TD, w1_EDH, w2_EHD)

    x_RD = x_TD.index_select(0, token_R)
    h_RH = _grouped_linear(x_RD, w1_EDH, counts_E, offsets_E, use_grouped) + b1_EH.index_select(0, sorted_ids_R)
    h_RH = F.gelu(h_RH)
    y_RD = _grouped_linear(h_RH, w2_EHD, counts_E, offsets_E, use_grouped) + b2_ED.index_select(0, sorted_ids_R)
    y_RD = y_RD * weights_TK.reshape(-1)[order_R, None]
    out_TD = torch.zeros_like(x_TD).index_add(0, token_R, y_RD)
    return out_TD, counts_E


class MoE(nn.Module):
    """Sparse MoE feed-forward with a pluggable router; returns the output, the routing and the router loss."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        router: Router,
        supervision: str = "combination",
        exclude: str = "own",
        targets_C: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.router = router
        self.supervision, self.exclude = supervision, exclude
        num_experts = router.num_experts
        self.register_buffer("targets_C", targets_C, persistent=False)
        pool_ME = None
        if router.layout == "disjoint":  # modality m may use experts [m * pool, (m + 1) * pool)
            pool_ME = (torch.arange(num_experts) // router.pool)[None, :] == torch.arange(router.groups)[:, None]
        self.register_buffer("pool_ME", pool_ME, persistent=False)
        self.w1_EDH = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.b1_EH = nn.Parameter(torch.empty(num_experts, hidden))
        self.w2_EHD = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.b2_ED = nn.Parameter(torch.empty(num_experts, dim))
        for w, b, fan_in in ((self.w1_EDH, self.b1_EH, dim), (self.w2_EHD, self.b2_ED, hidden)):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation, per expert
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    @property
    def num_experts(self) -> int:
        return self.w1_EDH.shape[0]

    def forward(self, x_TD: Tensor, info: TokenInfo) -> MoEOutput:
        routing = self.router(x_TD, info.modality_T)
        out_TD, counts_E = expert_ffn(
            x_TD, routing.ids_TK, routing.weights_TK, self.w1_EDH, self.b1_EH, self.w2_EHD, self.b2_ED
        )
        aux = gate_loss(
            routing,
            info.combo_T,
            info.modality_T,
            info.num_modalities,
            self.supervision,
            self.exclude,
            self.targets_C,
            self.pool_ME,
        )
        return MoEOutput(out_TD, routing, counts_E, aux)


class DenseFFN(nn.Module):
    """The dense feed-forward of the ``dense`` method: Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x_TD: Tensor, info: TokenInfo) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x_TD)))
