"""Token-choice dispatch: which rows each expert computes, as index arithmetic (no model weights here).

Shape letters: the legend in ``multimoe/__init__.py`` (T tokens, K slots per token, E experts, A = K * T
assignments numbered slot-major, R routed rows sorted by expert, Q rows of the padded layout).

``plan_dispatch`` stable-sorts the (token, slot) assignments by expert, slot-major, so that under a capacity each
expert keeps its top-1 assignments first, then its top-2 ones, ..., each in token order; assignments past the
capacity are dropped and contribute nothing. ``Dispatch.padded`` lays the rows out for batched products: every
expert padded to a common width chosen per call by ``padded_width``, plus the rows of the experts past it. On CPU
this index arithmetic runs in numpy (a fraction of torch's per-op cost at these sizes).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

_HOST_PLANS = True  # plan CPU dispatches with numpy (tests switch it off to run the torch version on CPU)


def _host_plan(t: Tensor) -> bool:
    return _HOST_PLANS and t.device.type == "cpu"


@dataclass
class Padded:
    """Rows laid out for batched products: expert e's first ``width`` rows at e * width + i (padded up to
    ``width``), then the rows of experts with more than ``width`` rows ("overflow"), by expert."""

    width: int
    num_experts: int
    source_Q: Tensor  # token of each row; token 0 for padding (padding rows get a zero gate)
    gate_Q: Tensor  # assignment a = k * T + t of each row, into the gates with a zero appended; T * K for padding
    row_TK: Tensor  # row of each (token, slot) assignment (dropped ones: masked by Dispatch.keep_TK)
    overflow: list[tuple[int, int, int]]  # (expert, first row, end row) of the rows past ``width``

    @property
    def rows(self) -> int:
        return self.source_Q.shape[0]


@dataclass
class Dispatch:
    """The routed assignments sorted by expert, and the padded layout derived from them (computed on use)."""

    order_R: Tensor  # assignment a of each routed row
    expert_R: Tensor  # expert of each row (non-decreasing)
    counts_E: Tensor  # rows per expert
    keep_TK: Tensor | None  # False where an assignment was dropped by the capacity; None when nothing was dropped
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
    def counts(self) -> list[int]:
        """Rows per expert on the host (a device sync on CUDA)."""
        return self.counts_E.tolist()

    def rows_of_assignments(self, row_R: Tensor) -> Tensor:
        """T x K: the row of each (token, slot) assignment, given each routed row's position ``row_R``; a dropped
        assignment points at row 0 (masked by ``keep_TK``)."""
        T, K = self.num_tokens, self.top_k
        row_A = torch.zeros(T * K, dtype=torch.long, device=row_R.device).index_put_((self.order_R,), row_R)
        return row_A.view(K, T).t().contiguous()

    def padded(self, width: int) -> Padded:
        """The layout with experts padded to ``width`` rows (see ``padded_width``)."""
        if self._padded is not None and self._padded.width == width:
            return self._padded
        T, K, E, W = self.num_tokens, self.top_k, len(self.counts), width
        # row r of expert e (rows of e start at s_e) goes to r + (e * W - s_e) while r < s_e + W, else to
        # r + (E * W + o_e - s_e - W), o_e the overflow rows of the experts before e
        table, overflow, start, over_start = [], [], 0, E * W
        for e, n in enumerate(self.counts):
            table.append((start + W, e * W - start, over_start - start - W))
            if n > W:
                overflow.append((e, over_start, over_start + n - W))
                over_start += n - W
            start += n
        Q = over_start
        if _host_plan(self.order_R):  # the same index arithmetic in numpy: ~10x less overhead per small op
            order, expert = self.order_R.numpy(), self.expert_R.numpy()
            table_R3 = np.asarray(table, dtype=np.int64).reshape(E, 3)[expert]
            r_R = np.arange(self.rows)
            row_R = r_R + np.where(r_R < table_R3[:, 0], table_R3[:, 1], table_R3[:, 2])
            source_Q, gate_Q, row_A = np.zeros(Q, np.int64), np.full(Q, T * K, np.int64), np.zeros(T * K, np.int64)
            source_Q[row_R], gate_Q[row_R], row_A[order] = order % max(T, 1), order, row_R
            row_TK = np.ascontiguousarray(row_A.reshape(K, T).T)
            layout = [torch.from_numpy(a) for a in (source_Q, gate_Q, row_TK)]
        else:
            device = self.order_R.device
            table_R3 = torch.tensor(table, device=device).view(E, 3).index_select(0, self.expert_R)
            r_R = torch.arange(self.rows, device=device)
            row_R = r_R + torch.where(r_R < table_R3[:, 0], table_R3[:, 1], table_R3[:, 2])
            source_Q = torch.zeros(Q, dtype=torch.long, device=device).index_put_((row_R,), self.token_R)
            gate_Q = torch.full((Q,), T * K, dtype=torch.long, device=device).index_put_((row_R,), self.order_R)
            layout = [source_Q, gate_Q, self.rows_of_assignments(row_R)]
        self._padded = Padded(W, E, *layout, overflow)
        return self._padded


def expert_capacity(capacity_factor: float, num_tokens: int, top_k: int, num_experts: int) -> int:
    """Rows an expert may take: ceil(factor * T * K / E); 0 means no limit (dropless)."""
    if capacity_factor <= 0:
        return 0
    return max(1, math.ceil(capacity_factor * num_tokens * top_k / num_experts))


def plan_dispatch(ids_TK: Tensor, num_experts: int, capacity: int = 0) -> Dispatch:
    """Sort the (token, slot) assignments by expert (slot-major, stable), keeping at most ``capacity`` per expert."""
    T, K = ids_TK.shape
    if _host_plan(ids_TK):
        ids_A = np.ascontiguousarray(ids_TK.numpy().T).reshape(-1)  # slot-major: a = k * T + t
        order_R = np.argsort(ids_A, kind="stable")
        counts_E = np.bincount(ids_A, minlength=num_experts)
        expert_R = ids_A[order_R]
        keep_TK = None
        if capacity and T * K and counts_E.max() > capacity:
            rank_R = np.arange(T * K) - (np.cumsum(counts_E) - counts_E)[expert_R]  # position in its expert
            kept_R = rank_R < capacity
            keep_A = np.zeros(T * K, dtype=bool)
            keep_A[order_R] = kept_R
            keep_TK = torch.from_numpy(keep_A.reshape(K, T).T)
            order_R, expert_R, counts_E = order_R[kept_R], expert_R[kept_R], np.minimum(counts_E, capacity)
        tensors = [torch.from_numpy(a.astype(np.int64, copy=False)) for a in (order_R, expert_R, counts_E)]
        return Dispatch(*tensors, keep_TK, T, K)
    device = ids_TK.device
    ids_A = ids_TK.t().reshape(-1)
    order_R = torch.argsort(ids_A, stable=True)
    counts_E = torch.bincount(ids_A, minlength=num_experts)
    expert_R = ids_A.index_select(0, order_R)
    keep_TK = None
    if capacity and T * K and int(counts_E.max()) > capacity:
        starts_E = torch.cumsum(counts_E, 0) - counts_E
        rank_R = torch.arange(T * K, device=device) - starts_E.index_select(0, expert_R)
        kept_R = rank_R < capacity
        keep_A = torch.zeros(T * K, dtype=torch.bool, device=device).index_put_((order_R,), kept_R)
        keep_TK = keep_A.view(K, T).t()
        order_R, expert_R = order_R[kept_R], expert_R[kept_R]
        counts_E = counts_E.clamp(max=capacity)
    return Dispatch(order_R, expert_R, counts_E, keep_TK, T, K)


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
