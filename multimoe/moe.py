"""The sparse MoE feed-forward (the engine): one call for all tokens of all modalities, token-choice dispatch,
dropless unless a capacity factor is set.

Shapes: T tokens, D width, H expert hidden width, E experts, K experts per token, R routed rows (T*K when no
(token, slot) pair is dropped), P rows of the padded layout (R plus padding).

Dispatch (``plan_dispatch``): stable-sort the (token, slot) pairs by expert, slot-major, so that under a capacity
each expert keeps its top-1 pairs first, then its top-2 pairs, ..., each in token order; pairs past the capacity
are dropped and contribute nothing. On CPU this index arithmetic runs in numpy (a fraction of the per-op cost).

Compute: one autograd Function per path with a hand-written backward: gather the tokens into rows grouped by
expert, run each expert (Linear -> GELU -> Linear) on its rows, gather each token's k outputs back and combine
them with the gate weights in one batched product. The backward runs the same products transposed, sums each
token's k input-gradient rows by the same gather (no scatter anywhere), frees each intermediate as soon as it is
used (peak memory close to a dense FFN's) and never indexes a stacked weight under autograd (which would build a
full-size gradient per expert). The paths differ in how the per-expert products run; ``choose_path`` picks one per
call, ``benchmarks/moe_layer.py`` measures them all:
- ``padded`` (the default): experts padded to a common width chosen per call (``padded_width``), one batched
  product (``bmm``, bias inside) for all of them plus one product per expert that overflows the width. On 2 CPU
  threads a batched product runs each expert's GEMM whole on one thread, at a dense GEMM's speed;
- ``grouped``: one ``torch._grouped_mm`` per product on the exact rows (no padding): a C++ loop over experts whose
  small GEMMs are each split over the threads; 16-byte aligned D and H; float32/bfloat16/float16 on CPU, bfloat16
  on CUDA;
- ``loop``: one ``addmm``/``mm`` per non-empty expert from Python; any shape and dtype.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from multimoe.gate_losses import gate_loss
from multimoe.routers import Router, Routing

_HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")
PATHS = ("padded", "grouped", "loop")
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
class Padded:
    """Rows laid out for batched products: expert e's first ``width`` rows at e * width + i (padded up to
    ``width``), then the rows of experts with more than ``width`` rows ("overflow"), by expert."""

    width: int
    num_experts: int
    source_P: Tensor  # token of each row; token 0 for padding (padding rows get a zero gate)
    gate_P: Tensor  # slot-major pair k * T + t of each row, into the gates with a zero appended; T * K for padding
    row_TK: Tensor  # row of each (token, slot) pair (dropped pairs: masked by Dispatch.keep_TK)
    overflow: list[tuple[int, int, int]]  # (expert, first row, end row) of the rows past ``width``

    @property
    def rows(self) -> int:
        return self.source_P.shape[0]


@dataclass
class Dispatch:
    """The routed (token, slot) pairs sorted by expert, and what each path derives from them (computed on use).

    Pairs are numbered slot-major, f = k * T + t; ``order_R`` lists the kept pairs grouped by expert."""

    order_R: Tensor  # pair f of each routed row
    expert_R: Tensor  # expert of each row (non-decreasing)
    counts_E: Tensor  # rows per expert
    keep_TK: Tensor | None  # False where a pair was dropped by the capacity; None when nothing was dropped
    num_tokens: int
    top_k: int
    _padded: Padded | None = None

    @property
    def rows(self) -> int:
        return self.order_R.shape[0]

    @functools.cached_property
    def token_R(self) -> Tensor:
        """Source token of each row."""
        return self.order_R % max(self.num_tokens, 1)

    @functools.cached_property
    def row_TK(self) -> Tensor:
        """Row of each (token, slot) pair; a dropped pair points at row 0 (masked by ``keep_TK``)."""
        return self._rows_of_pairs(torch.arange(self.rows, device=self.order_R.device))

    def _rows_of_pairs(self, row_R: Tensor) -> Tensor:
        T, K = self.num_tokens, self.top_k
        row_F = torch.zeros(T * K, dtype=torch.long, device=row_R.device).index_put_((self.order_R,), row_R)
        return row_F.view(K, T).t().contiguous()

    @functools.cached_property
    def offsets_E(self) -> Tensor:
        """int32 end of each expert's rows (the grouped-mm layout)."""
        return torch.cumsum(self.counts_E, 0).to(torch.int32)

    @functools.cached_property
    def counts(self) -> list[int]:
        """Rows per expert on the host (a device sync on CUDA)."""
        return self.counts_E.tolist()

    @functools.cached_property
    def bounds(self) -> list[tuple[int, int, int]]:
        """(expert, first row, end row) of each non-empty expert, on the host."""
        out, start = [], 0
        for e, n in enumerate(self.counts):
            if n:
                out.append((e, start, start + n))
            start += n
        return out

    def gates_R(self, gates_TK: Tensor) -> Tensor:
        """The gate weight of each row."""
        return gates_TK.t().reshape(-1).index_select(0, self.order_R)

    def padded(self, width: int) -> Padded:
        """The layout of the ``padded`` path with experts padded to ``width`` rows (see ``padded_width``)."""
        if self._padded is not None and self._padded.width == width:
            return self._padded
        T, K, E, C = self.num_tokens, self.top_k, len(self.counts), width
        # row r of expert e (rows of e start at s_e) goes to r + (e * C - s_e) while r < s_e + C, else to
        # r + (E * C + o_e - s_e - C), o_e the overflow rows of the experts before e
        table, overflow, start, over_start = [], [], 0, E * C
        for e, n in enumerate(self.counts):
            table.append((start + C, e * C - start, over_start - start - C))
            if n > C:
                overflow.append((e, over_start, over_start + n - C))
                over_start += n - C
            start += n
        P = over_start
        if _host_plan(self.order_R):  # the same index arithmetic in numpy: ~10x less overhead per small op
            order, expert = self.order_R.numpy(), self.expert_R.numpy()
            table_R3 = np.asarray(table, dtype=np.int64).reshape(E, 3)[expert]
            r_R = np.arange(self.rows)
            row_R = r_R + np.where(r_R < table_R3[:, 0], table_R3[:, 1], table_R3[:, 2])
            source_P, gate_P, row_F = np.zeros(P, np.int64), np.full(P, T * K, np.int64), np.zeros(T * K, np.int64)
            source_P[row_R], gate_P[row_R], row_F[order] = order % max(T, 1), order, row_R
            row_TK = np.ascontiguousarray(row_F.reshape(K, T).T)
            layout = [torch.from_numpy(a) for a in (source_P, gate_P, row_TK)]
        else:
            device = self.order_R.device
            table_R3 = torch.tensor(table, device=device).view(E, 3).index_select(0, self.expert_R)
            r_R = torch.arange(self.rows, device=device)
            row_R = r_R + torch.where(r_R < table_R3[:, 0], table_R3[:, 1], table_R3[:, 2])
            source_P = torch.zeros(P, dtype=torch.long, device=device).index_put_((row_R,), self.token_R)
            gate_P = torch.full((P,), T * K, dtype=torch.long, device=device).index_put_((row_R,), self.order_R)
            layout = [source_P, gate_P, self._rows_of_pairs(row_R)]
        self._padded = Padded(C, E, *layout, overflow)
        return self._padded


_HOST_PLANS = True  # plan CPU dispatches with numpy (tests switch it off to run the torch version on CPU)


def _host_plan(t: Tensor) -> bool:
    return _HOST_PLANS and t.device.type == "cpu"


def expert_capacity(capacity_factor: float, num_tokens: int, top_k: int, num_experts: int) -> int:
    """Rows an expert may take: ceil(factor * T * K / E); 0 means no limit (dropless)."""
    if capacity_factor <= 0:
        return 0
    return max(1, math.ceil(capacity_factor * num_tokens * top_k / num_experts))


def plan_dispatch(ids_TK: Tensor, num_experts: int, capacity: int = 0) -> Dispatch:
    """Sort the (token, slot) pairs by expert (slot-major, stable) and keep at most ``capacity`` per expert."""
    T, K = ids_TK.shape
    if _host_plan(ids_TK):
        flat_ids_F = np.ascontiguousarray(ids_TK.numpy().T).reshape(-1)  # slot-major: f = k * T + t
        order_R = np.argsort(flat_ids_F, kind="stable")
        counts_E = np.bincount(flat_ids_F, minlength=num_experts)
        expert_R = flat_ids_F[order_R]
        keep_TK = None
        if capacity and T * K and counts_E.max() > capacity:
            rank_R = np.arange(T * K) - (np.cumsum(counts_E) - counts_E)[expert_R]  # position in its expert
            kept_R = rank_R < capacity
            keep_F = np.zeros(T * K, dtype=bool)
            keep_F[order_R] = kept_R
            keep_TK = torch.from_numpy(keep_F.reshape(K, T).T)
            order_R, expert_R, counts_E = order_R[kept_R], expert_R[kept_R], np.minimum(counts_E, capacity)
        tensors = [torch.from_numpy(a.astype(np.int64, copy=False)) for a in (order_R, expert_R, counts_E)]
        return Dispatch(*tensors, keep_TK, T, K)
    device = ids_TK.device
    flat_ids_F = ids_TK.t().reshape(-1)
    order_R = torch.argsort(flat_ids_F, stable=True)
    counts_E = torch.bincount(flat_ids_F, minlength=num_experts)
    expert_R = flat_ids_F.index_select(0, order_R)
    keep_TK = None
    if capacity and T * K and int(counts_E.max()) > capacity:
        starts_E = torch.cumsum(counts_E, 0) - counts_E
        rank_R = torch.arange(T * K, device=device) - starts_E.index_select(0, expert_R)
        kept_R = rank_R < capacity
        keep_F = torch.zeros(T * K, dtype=torch.bool, device=device).index_put_((order_R,), kept_R)
        keep_TK = keep_F.view(K, T).t()
        order_R, expert_R = order_R[kept_R], expert_R[kept_R]
        counts_E = counts_E.clamp(max=capacity)
    return Dispatch(order_R, expert_R, counts_E, keep_TK, T, K)


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


def choose_path(x_TD: Tensor, w1_EDH: Tensor, w2_EHD: Tensor, plan: Dispatch) -> str:
    """The path for this call. ``padded`` (with its width picked per call by ``padded_width``) measured fastest in
    every case of benchmarks/moe_layer.py on CPU (2 threads), small or large batches, few or many experts,
    balanced or skewed routing: its batched products run each expert's GEMM whole on one thread, where the
    grouped and loop paths split every small GEMM over the threads. It runs any dtype and shape, on any device.
    On CUDA it is one kernel per product, and unmeasured here (no GPU)."""
    return "padded"


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
    def forward(ctx, x_TD, gates_TK, w1_EDH, b1_EH, w2_EHD, b2_ED, plan: Dispatch, path: str):
        xs_RD = x_TD.index_select(0, plan.token_R)
        pre_RH = _forward_linear(xs_RD, w1_EDH, b1_EH, plan, path)
        h_RH = F.gelu(pre_RH)
        y_RD = _forward_linear(h_RH, w2_EHD, b2_ED, plan, path)
        out_TD, y_TKD = _combine(y_RD, plan.row_TK, gates_TK, plan.keep_TK)
        del y_RD
        ctx.save_for_backward(x_TD, gates_TK, w1_EDH, w2_EHD)
        ctx.xs_RD, ctx.pre_RH, ctx.h_RH, ctx.y_TKD = xs_RD, pre_RH, h_RH, y_TKD
        ctx.plan, ctx.path = plan, path
        return out_TD

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_TD):
        x_TD, gates_TK, w1_EDH, w2_EHD = ctx.saved_tensors
        plan, path = ctx.plan, ctx.path
        E = w1_EDH.shape[0]
        grad_TD = grad_TD.contiguous()  # an expanded (stride-0) gradient breaks the grouped product
        grad_gates_TK = _gates_grad(ctx.y_TKD, grad_TD, gates_TK, plan.keep_TK) if ctx.needs_input_grad[1] else None
        ctx.y_TKD = None
        gate_R = plan.gates_R(gates_TK).to(grad_TD.dtype)
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
            grad_x_TD = _sum_rows(dxs_RD, plan.row_TK, plan.keep_TK)
            del dxs_RD
        dw1_EDH = _weight_grad(ctx.xs_RD, dpre_RH, E, plan, path)
        ctx.xs_RD = None
        return grad_x_TD, grad_gates_TK, dw1_EDH, db1_EH, dw2_EHD, db2_ED, None, None


def _combine(y_ND: Tensor, row_TK: Tensor, gates_TK: Tensor, keep_TK: Tensor | None) -> tuple[Tensor, Tensor]:
    """out_t = Σ_k gate_tk * y[row_tk] as one batched product over tokens; also the gathered y_TKD."""
    T, K = row_TK.shape
    y_TKD = y_ND.index_select(0, row_TK.view(-1)).view(T, K, y_ND.shape[1])
    mixing_TK = gates_TK if keep_TK is None else gates_TK * keep_TK
    return torch.bmm(mixing_TK.unsqueeze(1).to(y_TKD.dtype), y_TKD).squeeze(1), y_TKD


def _sum_rows(g_ND: Tensor, row_TK: Tensor, keep_TK: Tensor | None) -> Tensor:
    """Per token: the sum of the rows of its kept (token, slot) pairs. A gather and a sum over the K slots, not an
    ``index_add`` over the rows: the same values, ~3x faster on CPU (its scatter runs serially)."""
    T, K = row_TK.shape
    g_TKD = g_ND.index_select(0, row_TK.view(-1)).view(T, K, g_ND.shape[1])
    if keep_TK is not None:
        g_TKD = g_TKD * keep_TK.unsqueeze(2).to(g_TKD.dtype)
    return g_TKD.sum(dim=1)


def _gates_grad(y_TKD: Tensor, grad_TD: Tensor, gates_TK: Tensor, keep_TK: Tensor | None) -> Tensor:
    # a multiply-sum, not bmm: T tiny (K x D) @ (D x 1) products cost ~4x more as a batched matmul on CPU
    grad_TK = (y_TKD * grad_TD.unsqueeze(1)).sum(dim=2).to(gates_TK.dtype)
    return grad_TK if keep_TK is None else grad_TK * keep_TK


def padded_width(counts: list[int]) -> int:
    """The width w minimising E*w + Σ_e (n_e - w)+ + κ * #{n_e > w}: rows computed, padding included, plus a
    fixed cost per overflowing expert. Padding every expert to the largest wastes rows when a few experts are
    large (combination-supervised routing sends each combination to one expert); each overflowing expert costs
    separate, smaller products. κ = 64 rows fits the measured optimum on CPU for D x H from 128 x 256 to
    512 x 2048 (a small GEMM's fixed cost grows with its size much as a row's work does)."""
    kappa = 64.0
    E = len(counts)
    best_w, best_cost, prefix, previous = 0, float("inf"), 0, None
    for i, w in enumerate(sorted(counts, reverse=True)):  # at the first of equal counts, i experts lie above w
        if w != previous:
            cost = E * w + (prefix - i * w) + kappa * i
            if cost < best_cost:
                best_w, best_cost = w, cost
        prefix, previous = prefix + w, w
    if sum(counts) + kappa * sum(n > 0 for n in counts) < best_cost:  # width 0: every expert on its own
        best_w = 0
    return best_w


def _padded_linear(a_PI: Tensor, w_EIO: Tensor, b_EO: Tensor, pad: Padded) -> Tensor:
    """Row -> a_r @ w[e] + b[e] on the padded layout: one batched product for the first E * width rows, one
    per overflowing expert after them."""
    E, W = w_EIO.shape[0], pad.width
    out_PO = a_PI.new_empty(a_PI.shape[0], w_EIO.shape[2])
    bulk_out = out_PO[: E * W].view(E, W, out_PO.shape[1])
    torch.baddbmm(b_EO.unsqueeze(1), a_PI[: E * W].view(E, W, a_PI.shape[1]), w_EIO, out=bulk_out)
    for e, s, t in pad.overflow:
        torch.addmm(b_EO[e], a_PI[s:t], w_EIO[e], out=out_PO[s:t])
    return out_PO


def _padded_input_grad(g_PO: Tensor, w_EIO: Tensor, pad: Padded) -> Tensor:
    """Row -> g_r @ w[e]^T on the padded layout."""
    E, W = w_EIO.shape[0], pad.width
    w_EOI = w_EIO.transpose(1, 2)
    out_PI = g_PO.new_empty(g_PO.shape[0], w_EIO.shape[1])
    bulk_out = out_PI[: E * W].view(E, W, out_PI.shape[1])
    torch.bmm(g_PO[: E * W].view(E, W, g_PO.shape[1]), w_EOI, out=bulk_out)
    for e, s, t in pad.overflow:
        torch.mm(g_PO[s:t], w_EOI[e], out=out_PI[s:t])
    return out_PI


def _padded_weight_grads(a_PI: Tensor, g_PO: Tensor, pad: Padded) -> tuple[Tensor, Tensor]:
    """Per expert Σ_r a_r^T g_r and Σ_r g_r over its rows on the padded layout (padding rows have g = 0)."""
    E, W = pad.num_experts, pad.width
    bulk_g = g_PO[: E * W].view(E, W, g_PO.shape[1])
    dw_EIO = torch.bmm(a_PI[: E * W].view(E, W, a_PI.shape[1]).transpose(1, 2), bulk_g)
    db_EO = bulk_g.sum(1)
    for e, s, t in pad.overflow:
        dw_EIO[e].addmm_(a_PI[s:t].t(), g_PO[s:t])
        db_EO[e] += g_PO[s:t].sum(0)
    return dw_EIO, db_EO


class _PaddedExpertFFN(torch.autograd.Function):
    """The same layer on the padded layout: each product is one batched matmul (one parallel region on CPU, one
    kernel on CUDA) with the bias inside it, plus one matmul per overflowing expert. Padding rows read token 0
    with a zero gate: their outputs are never gathered and their rows of every backward product are exactly zero
    (for finite values), so they add nothing to any gradient."""

    @staticmethod
    def forward(ctx, x_TD, gates_TK, w1_EDH, b1_EH, w2_EHD, b2_ED, plan: Dispatch, width: int):
        pad = plan.padded(width)
        xs_PD = x_TD.index_select(0, pad.source_P)
        pre_PH = _padded_linear(xs_PD, w1_EDH, b1_EH, pad)
        h_PH = F.gelu(pre_PH)
        y_PD = _padded_linear(h_PH, w2_EHD, b2_ED, pad)
        out_TD, y_TKD = _combine(y_PD, pad.row_TK, gates_TK, plan.keep_TK)
        del y_PD
        ctx.save_for_backward(x_TD, gates_TK, w1_EDH, w2_EHD)
        ctx.xs_PD, ctx.pre_PH, ctx.h_PH, ctx.y_TKD = xs_PD, pre_PH, h_PH, y_TKD
        ctx.pad, ctx.keep_TK = pad, plan.keep_TK
        return out_TD

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_TD):
        x_TD, gates_TK, w1_EDH, w2_EHD = ctx.saved_tensors
        pad = ctx.pad
        grad_TD = grad_TD.contiguous()
        grad_gates_TK = _gates_grad(ctx.y_TKD, grad_TD, gates_TK, ctx.keep_TK) if ctx.needs_input_grad[1] else None
        ctx.y_TKD = None
        gates_F1 = torch.cat([gates_TK.t().reshape(-1, 1), gates_TK.new_zeros(1, 1)]).to(grad_TD.dtype)
        dy_PD = grad_TD.index_select(0, pad.source_P).mul_(gates_F1.index_select(0, pad.gate_P))
        dw2_EHD, db2_ED = _padded_weight_grads(ctx.h_PH, dy_PD, pad)
        ctx.h_PH = None
        dpre_PH = _padded_input_grad(dy_PD, w2_EHD, pad)
        del dy_PD
        torch.ops.aten.gelu_backward.grad_input(dpre_PH, ctx.pre_PH, grad_input=dpre_PH)  # in place
        ctx.pre_PH = None
        grad_x_TD = None
        if ctx.needs_input_grad[0]:
            dxs_PD = _padded_input_grad(dpre_PH, w1_EDH, pad)
            grad_x_TD = _sum_rows(dxs_PD, pad.row_TK, ctx.keep_TK)
            del dxs_PD
        dw1_EDH, db1_EH = _padded_weight_grads(ctx.xs_PD, dpre_PH, pad)
        ctx.xs_PD = None
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
    if path == "padded":
        width = padded_width(plan.counts)
        out_TD = _PaddedExpertFFN.apply(x_TD, weights_TK, w1_EDH, b1_EH, w2_EHD, b2_ED, plan, width)
    else:
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
