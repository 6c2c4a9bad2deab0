"""The sparse MoE feed-forward: one call for all tokens of all modalities, token-choice dispatch, dropless unless a
capacity factor is set.

Shapes: T tokens, D width, H expert hidden width, E experts, K experts per token, R routed rows (T*K when no
(token, slot) pair is dropped).

Dispatch (``plan_dispatch``): stable-sort the (token, slot) pairs by expert, slot-major, so that under a capacity
each expert keeps its top-1 pairs first, then its top-2 pairs, ..., each in token order; pairs past the capacity
are dropped and contribute nothing. Compute (``_ExpertFFN``, one autograd Function with a hand-written backward):
gather the tokens into one buffer grouped by expert, run each expert (Linear -> GELU -> Linear) on its contiguous
slice, gather each token's k outputs back and combine them with the gate weights in one batched product (no
scatter). The backward runs the same grouped products transposed, the bias gradients as segment sums and the
input gradient as a gather-and-sum; the expert input buffer is re-gathered rather than kept. Compared with
composing the same steps under autograd this saves a third of the kernels and all per-expert autograd nodes, which
is what dominates at Flex-MoE's small batches.

Paths differ only in how the grouped products run (``choose_path`` picks one per call, ``benchmarks/moe_layer.py``
measures them):
- ``grouped``: one ``torch._grouped_mm`` per product (public alias ``F.grouped_mm``), where the inner dimensions
  are 16-byte aligned and the dtype is float32/bfloat16/float16, on CPU and CUDA;
- ``loop``: one matmul per non-empty expert on slices of the weights (``addmm`` with the bias in the forward);
  any shape and dtype. Never ``W[e]`` under autograd: the hand-written backward writes each expert's gradient
  into one preallocated stacked gradient.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from multimoe.gate_losses import gate_loss
from multimoe.routers import Router, Routing

_HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")
PATHS = ("grouped", "loop")
_GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


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
    tokens_per_expert_E: Tensor  # (token, slot) pairs each expert processed (after the capacity, if any)
    aux_loss: Tensor


@dataclass
class Dispatch:
    """Where the routed rows go: rows grouped by expert, and the way back to (token, slot) pairs."""

    token_R: Tensor  # source token of each routed row
    pair_R: Tensor  # flat index t * K + k of each row's (token, slot) pair in ids_TK / weights_TK
    expert_R: Tensor  # expert of each row (non-decreasing)
    counts_E: Tensor  # rows per expert
    offsets_E: Tensor  # int32 end of each expert's rows (the grouped-mm layout)
    row_TK: Tensor  # row of each (token, slot) pair; a dropped pair points at row 0 and is masked by keep_TK
    keep_TK: Tensor | None  # False where a pair was dropped by the capacity; None when nothing was dropped

    @property
    def rows(self) -> int:
        return self.token_R.shape[0]

    @functools.cached_property
    def bounds(self) -> list[tuple[int, int, int]]:
        """(expert, first row, end row) of each non-empty expert, on the host (a device sync on CUDA)."""
        out, start = [], 0
        for e, n in enumerate(self.counts_E.tolist()):
            if n:
                out.append((e, start, start + n))
            start += n
        return out


def expert_capacity(capacity_factor: float, num_tokens: int, top_k: int, num_experts: int) -> int:
    """Rows an expert may take: ceil(factor * T * K / E); 0 means no limit (dropless)."""
    if capacity_factor <= 0:
        return 0
    return max(1, math.ceil(capacity_factor * num_tokens * top_k / num_experts))


def plan_dispatch(ids_TK: Tensor, num_experts: int, capacity: int = 0) -> Dispatch:
    """Sort the (token, slot) pairs by expert (slot-major, stable) and keep at most ``capacity`` per expert."""
    T, K = ids_TK.shape
    device = ids_TK.device
    flat_ids_F = ids_TK.t().reshape(-1)  # slot-major: f = k * T + t
    order_F = torch.argsort(flat_ids_F, stable=True)
    counts_E = torch.bincount(flat_ids_F, minlength=num_experts)
    expert_R = flat_ids_F.index_select(0, order_F)
    keep_TK = None
    if capacity and T * K and int(counts_E.max()) > capacity:
        starts_E = torch.cumsum(counts_E, 0) - counts_E
        rank_F = torch.arange(T * K, device=device) - starts_E.index_select(0, expert_R)  # position in its expert
        kept_F = rank_F < capacity
        keep_F = torch.zeros(T * K, dtype=torch.bool, device=device).index_put_((order_F,), kept_F)
        keep_TK = keep_F.view(K, T).t()
        order_F, expert_R = order_F[kept_F], expert_R[kept_F]
        counts_E = counts_E.clamp(max=capacity)
    R = order_F.shape[0]
    row_F = torch.zeros(T * K, dtype=torch.long, device=device)
    row_F.index_put_((order_F,), torch.arange(R, device=device))
    token_R, slot_R = order_F % max(T, 1), order_F // max(T, 1)
    return Dispatch(
        token_R=token_R,
        pair_R=token_R * K + slot_R,
        expert_R=expert_R,
        counts_E=counts_E,
        offsets_E=torch.cumsum(counts_E, 0).to(torch.int32),
        row_TK=row_F.view(K, T).t().contiguous(),
        keep_TK=keep_TK,
    )


def grouped_supported(x: Tensor, *weights: Tensor) -> bool:
    """Whether ``torch._grouped_mm`` runs these operands: 16-byte aligned inner dimensions; on CPU float32,
    bfloat16 or float16; on CUDA bfloat16 (its grouped kernel; other dtypes fall back to a per-group loop that
    syncs with the host, which the loop path does as well)."""
    if not _HAS_GROUPED_MM:
        return False
    if x.device.type == "cpu":
        if x.dtype not in _GROUPED_DTYPES:
            return False
    elif x.device.type != "cuda" or x.dtype != torch.bfloat16:
        return False
    align = 16 // x.element_size()
    return all(w.shape[-1] % align == 0 and w.shape[-2] % align == 0 for w in weights)


_grouped_ok = grouped_supported  # the name tests and older code use


def choose_path(x_TD: Tensor, w1_EDH: Tensor, w2_EHD: Tensor, plan: Dispatch) -> str:
    """The fastest correct path for this call, from benchmarks/moe_layer.py: the grouped product wherever it runs
    (its per-expert loop is in C++, with no Python or autograd cost per expert), else the per-expert loop."""
    if plan.rows and grouped_supported(x_TD, w1_EDH, w2_EHD):
        return "grouped"
    return "loop"


# ---------------------------------------------------------------------------------------------------------------
# Grouped products on rows sorted by expert. a_RI: rows, w_EIO: stacked weights.


def _forward_linear(a_RI: Tensor, w_EIO: Tensor, b_EO: Tensor, plan: Dispatch, path: str) -> Tensor:
    """Row r -> a_r @ w[e_r] + b[e_r]."""
    if path == "grouped":
        return torch._grouped_mm(a_RI, w_EIO, offs=plan.offsets_E).add_(b_EO.index_select(0, plan.expert_R))
    out_RO = a_RI.new_empty(a_RI.shape[0], w_EIO.shape[2])
    for e, s, t in plan.bounds:
        torch.addmm(b_EO[e], a_RI[s:t], w_EIO[e], out=out_RO[s:t])
    return out_RO


def _input_grad(g_RO: Tensor, w_EIO: Tensor, plan: Dispatch, path: str) -> Tensor:
    """Row r -> g_r @ w[e_r]^T."""
    w_EOI = w_EIO.transpose(1, 2)
    if path == "grouped":
        return torch._grouped_mm(g_RO, w_EOI, offs=plan.offsets_E)
    out_RI = g_RO.new_empty(g_RO.shape[0], w_EIO.shape[1])
    for e, s, t in plan.bounds:
        torch.mm(g_RO[s:t], w_EOI[e], out=out_RI[s:t])
    return out_RI


def _weight_grad(a_RI: Tensor, g_RO: Tensor, num_experts: int, plan: Dispatch, path: str) -> Tensor:
    """Per expert: Σ_r a_r^T g_r over its rows (zero for an empty expert)."""
    if path == "grouped":
        return torch._grouped_mm(a_RI.t(), g_RO, offs=plan.offsets_E)
    dw_EIO = a_RI.new_zeros(num_experts, a_RI.shape[1], g_RO.shape[1])
    for e, s, t in plan.bounds:
        torch.mm(a_RI[s:t].t(), g_RO[s:t], out=dw_EIO[e])
    return dw_EIO


def _segment_sum(g_RO: Tensor, num_experts: int, plan: Dispatch) -> Tensor:
    """Per expert: Σ_r g_r over its rows (the bias gradient)."""
    return g_RO.new_zeros(num_experts, g_RO.shape[1]).index_add_(0, plan.expert_R, g_RO)


class _ExpertFFN(torch.autograd.Function):
    """out_t = Σ_k gate_tk * (GELU(x_t W1[e] + b1[e]) W2[e] + b2[e]), e = expert of (t, k), over a ``Dispatch``.

    The intermediates live on ``ctx`` rather than in ``save_for_backward`` so that the backward can free each one
    as soon as it is used: peak memory stays close to a dense FFN's."""

    @staticmethod
    def forward(ctx, x_TD, gates_TK, w1_EDH, b1_EH, w2_EHD, b2_ED, plan: Dispatch, path: str):  # noqa: ANN001
        T, K = gates_TK.shape
        xs_RD = x_TD.index_select(0, plan.token_R)
        pre_RH = _forward_linear(xs_RD, w1_EDH, b1_EH, plan, path)
        del xs_RD
        h_RH = F.gelu(pre_RH)
        y_RD = _forward_linear(h_RH, w2_EHD, b2_ED, plan, path)
        y_TKD = y_RD.index_select(0, plan.row_TK.view(-1)).view(T, K, y_RD.shape[1])
        del y_RD
        mixing_TK = gates_TK if plan.keep_TK is None else gates_TK * plan.keep_TK
        out_TD = torch.bmm(mixing_TK.unsqueeze(1).to(y_TKD.dtype), y_TKD).squeeze(1)
        ctx.save_for_backward(x_TD, gates_TK, w1_EDH, w2_EHD)
        ctx.pre_RH, ctx.h_RH, ctx.y_TKD = pre_RH, h_RH, y_TKD
        ctx.plan, ctx.path = plan, path
        return out_TD

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_TD):  # noqa: ANN001
        x_TD, gates_TK, w1_EDH, w2_EHD = ctx.saved_tensors
        plan, path = ctx.plan, ctx.path
        E = w1_EDH.shape[0]
        grad_TD = grad_TD.contiguous()  # an expanded (stride-0) gradient breaks the grouped product
        grad_gates_TK = None
        if ctx.needs_input_grad[1]:
            grad_gates_TK = torch.bmm(ctx.y_TKD, grad_TD.unsqueeze(2)).squeeze(2).to(gates_TK.dtype)
            if plan.keep_TK is not None:
                grad_gates_TK = grad_gates_TK * plan.keep_TK
        ctx.y_TKD = None
        gate_R = gates_TK.reshape(-1).index_select(0, plan.pair_R).to(grad_TD.dtype)
        dy_RD = grad_TD.index_select(0, plan.token_R).mul_(gate_R.unsqueeze(1))
        db2_ED = _segment_sum(dy_RD, E, plan)
        dw2_EHD = _weight_grad(ctx.h_RH, dy_RD, E, plan, path)
        ctx.h_RH = None
        dpre_RH = _input_grad(dy_RD, w2_EHD, plan, path)
        del dy_RD
        torch.ops.aten.gelu_backward.grad_input(dpre_RH, ctx.pre_RH, grad_input=dpre_RH)  # in place
        ctx.pre_RH = None
        db1_EH = _segment_sum(dpre_RH, E, plan)
        grad_x_TD = None
        if ctx.needs_input_grad[0]:
            dxs_RD = _input_grad(dpre_RH, w1_EDH, plan, path)
            grad_x_TD = torch.zeros_like(x_TD).index_add_(0, plan.token_R, dxs_RD)
            del dxs_RD
        dw1_EDH = _weight_grad(x_TD.index_select(0, plan.token_R), dpre_RH, E, plan, path)
        return grad_x_TD, grad_gates_TK, dw1_EDH, db1_EH, dw2_EHD, db2_ED, None, None


@torch.compiler.disable  # data-dependent dispatch, and grouped_mm has no float32 trace: runs eagerly under compile
def expert_ffn(
    x_TD: Tensor,
    ids_TK: Tensor,
    weights_TK: Tensor,
    w1_EDH: Tensor,
    b1_EH: Tensor,
    w2_EHD: Tensor,
    b2_ED: Tensor,
    capacity_factor: float = 0.0,
    path: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Σ_k weight_k * expert_{id_k}(x) per token (experts: Linear -> GELU -> Linear); also rows per expert.

    ``capacity_factor`` > 0 caps each expert at ceil(factor * T * K / E) (token, slot) pairs, dropping the rest
    (they contribute nothing; the kept weights are not renormalised). ``path``: ``auto`` (``choose_path``) or one
    of ``PATHS``."""
    T, K = ids_TK.shape
    E = w1_EDH.shape[0]
    plan = plan_dispatch(ids_TK, E, expert_capacity(capacity_factor, T, K, E))
    if path == "auto":
        path = choose_path(x_TD, w1_EDH, w2_EHD, plan)
    elif path not in PATHS:
        raise ValueError(f"unknown MoE path {path!r}; choose auto or one of: {', '.join(PATHS)}")
    elif path == "grouped" and not grouped_supported(x_TD, w1_EDH, w2_EHD):
        raise ValueError("the grouped path needs float32/bfloat16/float16 and 16-byte aligned D and H")
    out_TD = _ExpertFFN.apply(x_TD, weights_TK, w1_EDH, b1_EH, w2_EHD, b2_ED, plan, path)
    return out_TD, plan.counts_E


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
        capacity_factor: float = 0.0,
    ) -> None:
        super().__init__()
        self.router = router
        self.supervision, self.exclude = supervision, exclude
        self.capacity_factor = capacity_factor
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
            x_TD,
            routing.ids_TK,
            routing.weights_TK,
            self.w1_EDH,
            self.b1_EH,
            self.w2_EHD,
            self.b2_ED,
            capacity_factor=self.capacity_factor,
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
