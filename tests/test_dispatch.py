"""Dispatch (multimoe/dispatch.py): the sort by expert, the capacity rule, the padded layout and its width, checked
against layouts worked out by hand."""

import torch

from multimoe.dispatch import expert_capacity, padded_width, plan_dispatch


def test_capacity_keeps_top1_pairs_first(plans):
    ids = torch.tensor([[0, 1], [1, 0], [0, 1]])  # top-1 pairs: expert 0 has two, expert 1 one
    plan = plan_dispatch(ids, 2, capacity=2)  # expert 0 keeps (0, 0), (2, 0); expert 1 keeps (1, 0), (0, 1)
    assert plan.keep_TK.tolist() == [[True, True], [True, False], [True, False]]
    assert plan.counts_E.tolist() == [2, 2]
    assert plan_dispatch(ids, 2, capacity=3).keep_TK is None


def test_plan_sorts_assignments_by_expert_slot_major(plans):
    # tokens t=0..2, slots k=0..1; assignment a = k * 3 + t: ids by a = [2, 0, 2, 0, 1, 0]
    ids = torch.tensor([[2, 0], [0, 1], [2, 0]])
    plan = plan_dispatch(ids, 3)
    assert plan.order_R.tolist() == [1, 3, 5, 4, 0, 2]  # expert 0: a=1,3,5; expert 1: a=4; expert 2: a=0,2
    assert plan.expert_R.tolist() == [0, 0, 0, 1, 2, 2]
    assert plan.counts_E.tolist() == [3, 1, 2] and plan.keep_TK is None
    assert plan.token_R.tolist() == [1, 0, 2, 1, 0, 2]


def test_padded_layout_places_rows_by_hand(plans):
    ids = torch.tensor([[2, 0], [0, 1], [2, 0]])  # counts per expert [3, 1, 2]
    pad = plan_dispatch(ids, 3).padded(2)  # width 2: expert 0 overflows by one row
    # rows 0-1 expert 0 (a=1, 3), rows 2-3 expert 1 (a=4, padding), rows 4-5 expert 2 (a=0, 2), row 6 overflow (a=5)
    assert pad.source_Q.tolist() == [1, 0, 1, 0, 0, 2, 2]
    assert pad.gate_Q.tolist() == [1, 3, 4, 6, 0, 2, 5]  # 6 = T * K: the zero gate of a padding row
    assert pad.overflow == [(0, 6, 7)]
    assert pad.row_TK.tolist() == [[4, 1], [0, 2], [5, 6]]  # (t, k) -> its row


def test_expert_capacity():
    assert expert_capacity(0.0, 100, 2, 8) == 0  # dropless
    assert expert_capacity(1.0, 100, 2, 8) == 25  # ceil(1.0 * 100 * 2 / 8)
    assert expert_capacity(1.25, 10, 1, 4) == 4  # ceil(3.125)
    assert expert_capacity(0.01, 10, 1, 4) == 1  # at least one row


def test_padded_width_trades_padding_for_calls():
    assert padded_width([128] * 16) == 128  # balanced: no padding, no overflow
    assert padded_width([6144] + [1229] * 15) == 1229  # one large expert overflows
    assert padded_width([]) == 0
    # [5, 1, 1]: width 1 costs 3*1 + 4 + 64*1 = 71; width 5 costs 15; width 0 costs 7 + 64*3 = 199 -> 5
    assert padded_width([5, 1, 1]) == 5
