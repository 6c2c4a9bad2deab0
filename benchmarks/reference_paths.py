"""Two more ways to run the experts on the sorted rows, kept for comparison with the engine (multimoe/moe.py):

- ``grouped``: one ``torch._grouped_mm`` per product on the exact rows (no padding): a C++ loop over experts whose
  small GEMMs are each split over the threads; 16-byte aligned D and H; float32/bfloat16/float16 on CPU, bfloat16
  on CUDA;
- ``loop``: one ``addmm``/``mm`` per non-empty expert from Python; any shape and dtype.

The engine's padded batched products measured faster than both in every case of moe_layer.py on CPU, so only the
benchmark and the tests use these. Same maths and the same hand-written backward structure as the engine.

Shape letters: the legend in multimoe/__init__.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from multimoe.dispatch import Dispatch, expert_capacity, plan_dispatch
from multimoe.moe import _combine, _gates_grad, _sum_rows, expert_ffn

PATHS = ("padded", "grouped", "loop")
_HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")
_GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


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


def _offsets(plan: Dispatch) -> Tensor:
    """int32 end of each expert's rows (the grouped-mm layout)."""
    return torch.cumsum(plan.counts_E, 0).to(torch.int32)


def _bounds(plan: Dispatch) -> list[tuple[int, int, int]]:
    """(expert, first row, end row) of each non-empty expert, on the host."""
    out, start = [], 0
    for e, n in enumerate(plan.counts):
        if n:
            out.append((e, start, start + n))
        start += n
    return out


def _forward_linear(a_RI: Tensor, w_EIO: Tensor, b_EO: Tensor, plan: Dispatch, path: str) -> Tensor:
    """Row r -> a_r @ w[e_r] + b[e_r]."""
    if path == "grouped":
        return torch._grouped_mm(a_RI, w_EIO, offs=_offsets(plan)).add_(b_EO.index_select(0, plan.expert_R))
    out_RO = a_RI.new_empty(a_RI.shape[0], w_EIO.shape[2])
    for e, s, t in _bounds(plan):
        torch.addmm(b_EO[e], a_RI[s:t], w_EIO[e], out=out_RO[s:t])
    return out_RO


def _input_grad(g_RO: Tensor, w_EIO: Tensor, plan: Dispatch, path: str) -> Tensor:
    """Row r -> g_r @ w[e_r]^T."""
    w_EOI = w_EIO.transpose(1, 2)
    if path == "grouped":
        return torch._grouped_mm(g_RO, w_EOI, offs=_offsets(plan))
    out_RI = g_RO.new_empty(g_RO.shape[0], w_EIO.shape[1])
    for e, s, t in _bounds(plan):
        torch.mm(g_RO[s:t], w_EOI[e], out=out_RI[s:t])
    return out_RI


def _weight_grad(a_RI: Tensor, g_RO: Tensor, num_experts: int, plan: Dispatch, path: str) -> Tensor:
    """Per expert: Σ_r a_r^T g_r over its rows (zero for an empty expert)."""
    if path == "grouped":
        return torch._grouped_mm(a_RI.t(), g_RO, offs=_offsets(plan))
    dw_EIO = a_RI.new_zeros(num_experts, a_RI.shape[1], g_RO.shape[1])
    for e, s, t in _bounds(plan):
        torch.mm(a_RI[s:t].t(), g_RO[s:t], out=dw_EIO[e])
    return dw_EIO


class _SortedExpertFFN(torch.autograd.Function):
    """The engine's layer on the exact sorted rows (no padding), products by ``path``."""

    @staticmethod
    def forward(ctx, x_TD, gates_TK, w1_EDH, b1_EH, w2_EHD, b2_ED, plan: Dispatch, path: str):
        row_TK = plan.rows_of_assignments(torch.arange(plan.rows, device=x_TD.device))
        xs_RD = x_TD.index_select(0, plan.token_R)
        pre_RH = _forward_linear(xs_RD, w1_EDH, b1_EH, plan, path)
        h_RH = F.gelu(pre_RH)
        y_RD = _forward_linear(h_RH, w2_EHD, b2_ED, plan, path)
        out_TD, y_TKD = _combine(y_RD, row_TK, gates_TK, plan.keep_TK)
        ctx.save_for_backward(gates_TK, w1_EDH, w2_EHD)
        ctx.xs_RD, ctx.pre_RH, ctx.h_RH, ctx.y_TKD, ctx.row_TK = xs_RD, pre_RH, h_RH, y_TKD, row_TK
        ctx.plan, ctx.path = plan, path
        return out_TD

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_TD):
        gates_TK, w1_EDH, w2_EHD = ctx.saved_tensors
        plan, path, E = ctx.plan, ctx.path, w1_EDH.shape[0]
        grad_TD = grad_TD.contiguous()  # an expanded (stride-0) gradient breaks the grouped product
        grad_gates_TK = _gates_grad(ctx.y_TKD, grad_TD, gates_TK, plan.keep_TK)
        gate_R = gates_TK.t().reshape(-1).index_select(0, plan.order_R).to(grad_TD.dtype)
        dy_RD = grad_TD.index_select(0, plan.token_R).mul_(gate_R.unsqueeze(1))
        db2_ED = grad_TD.new_zeros(E, grad_TD.shape[1]).index_add_(0, plan.expert_R, dy_RD)
        dw2_EHD = _weight_grad(ctx.h_RH, dy_RD, E, plan, path)
        dpre_RH = _input_grad(dy_RD, w2_EHD, plan, path)
        torch.ops.aten.gelu_backward.grad_input(dpre_RH, ctx.pre_RH, grad_input=dpre_RH)
        db1_EH = dpre_RH.new_zeros(E, dpre_RH.shape[1]).index_add_(0, plan.expert_R, dpre_RH)
        grad_x_TD = _sum_rows(_input_grad(dpre_RH, w1_EDH, plan, path), ctx.row_TK, plan.keep_TK)
        dw1_EDH = _weight_grad(ctx.xs_RD, dpre_RH, E, plan, path)
        return grad_x_TD, grad_gates_TK, dw1_EDH, db1_EH, dw2_EHD, db2_ED, None, None


def expert_ffn_path(x_TD, ids_TK, weights_TK, w1_EDH, b1_EH, w2_EHD, b2_ED, capacity_factor=0.0, path="padded"):
    """``multimoe.moe.expert_ffn`` with its products run by ``path`` (``padded`` is the engine itself)."""
    if path == "padded":
        return expert_ffn(x_TD, ids_TK, weights_TK, w1_EDH, b1_EH, w2_EHD, b2_ED, capacity_factor)
    if path not in PATHS:
        raise ValueError(f"unknown MoE path {path!r}; choose one of: {', '.join(PATHS)}")
    if path == "grouped" and not grouped_supported(x_TD, w1_EDH, w2_EHD):
        raise ValueError("the grouped path needs float32/bfloat16/float16 and 16-byte aligned D and H")
    T, K = ids_TK.shape
    E = w1_EDH.shape[0]
    plan = plan_dispatch(ids_TK, E, expert_capacity(capacity_factor, T, K, E))
    out_TD = _SortedExpertFFN.apply(x_TD, weights_TK, w1_EDH, b1_EH, w2_EHD, b2_ED, plan, path)
    return out_TD, plan.counts_E
