"""Routing statistics (multimoe/report/routing.py) on four tokens routed by hand: shares, own expert, router and
usage entropy, load CV, and the per-epoch drift, each against a value counted by hand."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from multimoe.model import ModelOutput
from multimoe.moe import MoEOutput, TokenInfo
from multimoe.report.routing import (
    RoutingTally,
    coefficient_of_variation,
    presence_table,
    routing_drift,
    routing_frames,
)
from multimoe.routers import Routing

LN2, LN3 = math.log(2), math.log(3)
# two modalities a, b; combinations 0 = a+b, 1 = a (b filled), 2 = b; three experts; top-1
MODALITY_T = torch.tensor([0, 1, 0, 1])
COMBO_T = torch.tensor([0, 0, 1, 1])
IDS_TK = torch.tensor([[0], [1], [0], [2]])
LOGITS_TE = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [0.0, 0.0, 100.0]])
TARGETS_S = torch.tensor([2, 0, 1])  # own expert of each combination


def tallied() -> dict[str, pd.DataFrame]:
    routing = Routing(torch.ones(4, 1), IDS_TK, LOGITS_TE, torch.zeros(4, 3))
    moe = MoEOutput(torch.zeros(4, 2), routing, torch.tensor([2, 1, 1]), torch.zeros(()))
    tally = RoutingTally(2)
    tally.update(ModelOutput(torch.zeros(2, 2), torch.zeros(()), [moe], TokenInfo(MODALITY_T, COMBO_T, 2)))
    return routing_frames(tally, ("a", "b"), [TARGETS_S])


def test_activation_shares_by_combination_and_modality():
    f = tallied()
    ac = f["activation_combination"].set_index(["combination", "expert"])["slot_share"]
    assert [ac["a+b", e] for e in range(3)] == [0.5, 0.5, 0.0]
    assert [ac["a", e] for e in range(3)] == [0.5, 0.0, 0.5]
    assert "b" not in f["activation_combination"]["combination"].tolist()  # no token of combination b
    am = f["activation_modality"].set_index(["modality", "observed", "expert"])["slot_share"]
    assert [am["a", True, e] for e in range(3)] == [1.0, 0.0, 0.0]
    assert [am["b", True, e] for e in range(3)] == [0.0, 1.0, 0.0]
    assert [am["b", False, e] for e in range(3)] == [0.0, 0.0, 1.0]  # the filled b of combination a


def test_own_expert_and_entropies_by_hand():
    rc = tallied()["routing_combination"].set_index("combination")
    assert rc.loc["a", "own_expert"] == 0
    assert rc.loc["a", "own_top1"] == 0.5 and rc.loc["a", "own_topk"] == 0.5  # t2 -> 0 (own), t3 -> 2
    assert rc.loc["a+b", "own_top1"] == 0.0  # own expert 2, chosen by neither token
    assert rc.loc["a+b", "router_entropy"] == pytest.approx(LN3)  # uniform scores over 3 experts
    assert rc.loc["a", "router_entropy"] == pytest.approx(0.0, abs=1e-30)  # scores 100 vs 0: decided
    assert rc.loc["a+b", "usage_entropy"] == pytest.approx(LN2)  # half to expert 0, half to expert 1
    assert rc.loc["a+b", "effective_experts"] == pytest.approx(2.0)
    rm = tallied()["routing_modality"].set_index(["modality", "observed"])
    assert rm.loc[("a", True), "usage_entropy"] == pytest.approx(0.0)  # both a tokens to expert 0
    assert rm.loc[("a", True), "router_entropy"] == pytest.approx(LN3 / 2)  # mean of ln 3 and 0
    assert rm.loc[("b", False), "tokens"] == 1


def test_load_balance_by_hand():
    f = tallied()
    bal = f["load_balance"].iloc[0]
    # slots per expert [2, 1, 1]: mean 4/3, population std sqrt(2)/3, CV sqrt(2)/4
    assert bal["slot_cv"] == pytest.approx(math.sqrt(2) / 4)
    assert bal["max_over_mean"] == pytest.approx(1.5)
    assert bal["unused_experts"] == 0 and bal["tokens"] == 4
    assert f["load"]["slots"].tolist() == [2, 1, 1]
    assert f["load"]["target_of"].tolist() == ["a", "b", "a+b"]
    assert coefficient_of_variation(np.array([3.0, 3.0])) == 0.0
    assert coefficient_of_variation(np.array([1.0, 3.0])) == pytest.approx(0.5)  # std 1, mean 2


def test_drift_per_epoch_by_hand():
    records = [
        {
            "epoch": 1,
            "layers": [
                {
                    "tokens_per_expert": [2, 1, 1],
                    "combination_weight": [[1, 1, 0], [1, 0, 1], [0, 0, 0]],
                    "modality_weight": [[2, 0, 0], [0, 1, 1]],
                }
            ],
        },
        {
            "epoch": 2,
            "layers": [
                {
                    "tokens_per_expert": [1, 1, 2],
                    "combination_weight": [[2, 0, 0], [0, 0, 2], [0, 0, 0]],
                    "modality_weight": [[1, 0, 1], [1, 0, 1]],
                }
            ],
        },
    ]
    drift = routing_drift(records, ("a", "b"), [TARGETS_S]).set_index(["epoch", "stat", "group"])["value"]
    assert drift[1, "load_cv", "all"] == pytest.approx(math.sqrt(2) / 4)
    # own expert of the partial combinations a (own 0) and b (own 1): epoch 1 gives a 1 of 2, epoch 2 none of 2
    assert drift[1, "own_weight", "partial combinations"] == pytest.approx(0.5)
    assert drift[2, "own_weight", "partial combinations"] == pytest.approx(0.0)
    assert drift[1, "usage_entropy", "combinations (mean)"] == pytest.approx(LN2)
    assert drift[2, "usage_entropy", "combinations (mean)"] == pytest.approx(0.0)
    assert drift[1, "usage_entropy", "a"] == pytest.approx(0.0) and drift[1, "usage_entropy", "b"] == pytest.approx(LN2)
    assert drift[2, "usage_entropy", "a"] == pytest.approx(LN2)


def test_frame_columns_and_types():
    f = tallied()
    rc = f["routing_combination"]
    own = ["own_expert", "own_top1", "own_topk", "own_weight"]
    entropies = ["router_entropy", "usage_entropy", "effective_experts"]
    assert list(rc.columns) == ["layer", "combination", "index", "size", "tokens", *own, *entropies]
    assert rc["tokens"].dtype == np.int64 and rc["tokens"].tolist() == [2, 2] and rc["size"].tolist() == [2, 1]
    assert rc.loc[rc.combination == "a", "own_weight"].item() == 0.5
    assert list(f["routing_modality"].columns) == ["layer", "modality", "observed", "tokens", "router_entropy",
                                                   "usage_entropy", "effective_experts"]  # fmt: skip
    assert f["routing_modality"]["observed"].tolist() == [True, True, False]  # observed modalities first
    assert list(f["activation_combination"].columns) == ["layer", "combination", "index", "size", "expert",
                                                         "slot_share", "weight_share", "top1_share",
                                                         "mean_weight"]  # fmt: skip
    assert f["activation_combination"].index.tolist() == list(range(6))
    # top-1 routing: every slot an expert takes carries gate weight 1; an expert no token of a group chose has none
    mean_weight = f["activation_combination"]["mean_weight"]
    assert mean_weight[f["activation_combination"]["slot_share"] > 0].tolist() == [1.0] * 4  # a: 0, 1; b: 0, 2
    assert mean_weight[f["activation_combination"]["slot_share"] == 0].isna().sum() == 2
    load = f["load"]
    assert load["slots"].dtype == np.int64 and load["slot_share"].tolist() == [0.5, 0.25, 0.25]
    assert load["importance"].tolist() == [2.0, 1.0, 1.0]  # top-1: every gate weight is 1
    assert f["load_balance"]["importance_cv"].item() == pytest.approx(math.sqrt(2) / 4)


def test_a_second_layer_without_targets_and_an_unused_expert():
    routing = Routing(torch.ones(4, 1), IDS_TK, LOGITS_TE, torch.zeros(4, 3))
    other = Routing(torch.ones(4, 1), torch.tensor([[1], [1], [1], [1]]), LOGITS_TE, torch.zeros(4, 3))
    moes = [MoEOutput(torch.zeros(4, 2), r, torch.zeros(3), torch.zeros(())) for r in (routing, other)]
    tally = RoutingTally(2)
    tally.update(ModelOutput(torch.zeros(2, 2), torch.zeros(()), moes, TokenInfo(MODALITY_T, COMBO_T, 2)))
    f = routing_frames(tally, ("a", "b"), [TARGETS_S])  # targets for layer 0 only
    assert f["load_balance"]["layer"].tolist() == [0, 1]
    assert all(frame.index.tolist() == list(range(len(frame))) for frame in f.values())  # one index over layers
    second = f["load_balance"].iloc[1]
    assert second["unused_experts"] == 2 and second["max_over_mean"] == pytest.approx(3.0)  # 4 slots on 1 of 3
    rc = f["routing_combination"]
    assert rc[rc.layer == 1]["own_expert"].isna().all() and rc[rc.layer == 0]["own_expert"].notna().all()
    assert f["load"][f["load"].layer == 1]["target_of"].tolist() == ["", "", ""]
    assert math.isnan(coefficient_of_variation(np.zeros(3)))  # no tokens: undefined, not 0


def test_drift_skips_epochs_without_layers_and_partial_tokens():
    layer = {
        "tokens_per_expert": [1, 1, 0],
        "combination_weight": [[2, 0, 0], [0, 0, 0], [0, 0, 0]],
        "modality_weight": [[1, 0, 0], [1, 0, 0]],
    }
    records = [{"epoch": 1}, {"epoch": 2, "layers": [layer]}]
    drift = routing_drift(records, ("a", "b"), [TARGETS_S])
    assert set(drift["epoch"]) == {2}
    assert "own_weight" not in set(drift["stat"])  # no token of a partial combination: nothing to share
    assert drift[(drift.stat == "usage_entropy") & (drift.group == "combinations (mean)")]["value"].item() == 0.0


def H(*p):
    return -sum(x * math.log(x) for x in p if x > 0)


def test_top2_a_one_token_group_and_an_expert_targeted_twice():
    """Top-2 routing of three tokens, counted by hand: t0 (a+b, modality a) to experts 0, 1 with weights 3/4, 1/4;
    t1 (a+b, b) to 0, 1 with 1/2, 1/2; t2 (combination b alone: one token) to 2, 0 with 5/8, 3/8. Uniform scores.
    Expert 0 is the target of a+b and of b; weights are binary fractions, so every sum below is exact."""
    ids = torch.tensor([[0, 1], [0, 1], [2, 0]])
    weights = torch.tensor([[0.75, 0.25], [0.5, 0.5], [0.625, 0.375]])
    routing = Routing(weights, ids, torch.zeros(3, 3), torch.zeros(3, 3))
    moe = MoEOutput(torch.zeros(3, 2), routing, torch.tensor([3, 2, 1]), torch.zeros(()))
    tally = RoutingTally(2)
    info = TokenInfo(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 2]), 2)
    tally.update(ModelOutput(torch.zeros(2, 2), torch.zeros(()), [moe], info))
    f = routing_frames(tally, ("a", "b"), [torch.tensor([0, 1, 0])])

    rc = f["routing_combination"].set_index("combination")
    assert rc.index.tolist() == ["a+b", "b"] and rc["tokens"].tolist() == [2, 1]  # b's one token counts
    assert rc["own_expert"].tolist() == [0, 0]
    assert rc["own_top1"].tolist() == [1.0, 0.0]  # t2's first choice is expert 2
    assert rc["own_topk"].tolist() == [1.0, 1.0]  # every token has expert 0 among its two
    assert rc["own_weight"].tolist() == [0.625, 0.375]  # (3/4 + 1/2) / 2; 3/8
    assert rc["router_entropy"].tolist() == pytest.approx([LN3, LN3])
    assert rc["usage_entropy"].tolist() == pytest.approx([H(0.625, 0.375), H(0.375, 0.625)])

    ac = f["activation_combination"]
    assert ac["mean_weight"].dtype == np.float64
    assert ac["slot_share"].tolist() == [0.5, 0.5, 0.0, 0.5, 0.0, 0.5]
    assert ac["weight_share"].tolist() == [0.625, 0.375, 0.0, 0.375, 0.0, 0.625]
    assert ac["top1_share"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    # mean gate weight per slot taken: a+b expert 0: (3/4 + 1/2) / 2 slots; none where no slot was taken
    assert ac["mean_weight"].fillna(-1).tolist() == [0.625, 0.375, -1, 0.375, -1, 0.625]

    rm = f["routing_modality"]
    assert rm["modality"].tolist() == ["a", "b"] and rm["observed"].tolist() == [True, True]  # no fills routed
    assert rm["tokens"].dtype == np.int64 and rm["tokens"].tolist() == [1, 2]
    assert rm["router_entropy"].tolist() == pytest.approx([LN3, LN3])  # a: one token
    # b: weights 1/2 + 3/8, 1/2, 5/8 over two tokens
    assert rm["usage_entropy"].tolist() == pytest.approx([H(0.75, 0.25), H(0.4375, 0.25, 0.3125)])

    load = f["load"]
    assert load["slots"].tolist() == [3, 2, 1] and load["slot_share"].tolist() == pytest.approx([1 / 2, 1 / 3, 1 / 6])
    assert load["importance"].tolist() == [1.625, 0.75, 0.625]
    assert load["target_of"].tolist() == ["a+b; b", "a", ""]
    bal = f["load_balance"].iloc[0]
    assert bal["top_k"] == 2 and bal["tokens"] == 3 and bal["max_over_mean"] == 1.5  # 3 slots over a mean of 2
    assert bal["slot_cv"] == pytest.approx(math.sqrt(2 / 3) / 2)  # std of 3, 2, 1 over their mean 2
    # importance 1.625, 0.75, 0.625: mean exactly 1, deviations 0.625, -0.25, -0.375
    assert bal["importance_cv"] == pytest.approx(math.sqrt((0.625**2 + 0.25**2 + 0.375**2) / 3))


def test_one_token_top1_layer():
    routing = Routing(torch.ones(1, 1), torch.tensor([[1]]), torch.zeros(1, 3), torch.zeros(1, 3))
    moe = MoEOutput(torch.zeros(1, 2), routing, torch.tensor([0, 1, 0]), torch.zeros(()))
    tally = RoutingTally(2)
    tally.update(
        ModelOutput(torch.zeros(1, 2), torch.zeros(()), [moe], TokenInfo(torch.tensor([0]), torch.tensor([1]), 2))
    )
    f = routing_frames(tally, ("a", "b"), [])
    assert f["load"]["slot_share"].tolist() == [0.0, 1.0, 0.0]  # one slot in all
    bal = f["load_balance"].iloc[0]
    assert bal["max_over_mean"] == pytest.approx(3.0) and bal["unused_experts"] == 2  # mean 1/3
    assert bal["slot_cv"] == pytest.approx(math.sqrt(2))  # std sqrt(2)/3 over mean 1/3
    assert "own_expert" not in f["routing_combination"].columns  # no targets: no own expert


def test_drift_with_one_partial_token_and_a_layer_past_the_targets():
    layer = {
        "tokens_per_expert": [2, 1, 1],
        "combination_weight": [[1, 1, 0], [0, 0, 0], [0.25, 0, 0.75]],  # tokens 2, 0, 1 (one partial token)
        "modality_weight": [[1, 1, 0], [0.25, 0, 0.75]],
    }
    drift = routing_drift([{"epoch": 3, "layers": [layer, layer]}], ("a", "b"), [torch.tensor([0, 1, 0])])
    value = drift.set_index(["layer", "stat", "group"])["value"]
    assert value[0, "own_weight", "partial combinations"] == 0.25  # b's own expert 0 got 1/4 of its one token
    assert (1, "own_weight", "partial combinations") not in value.index  # no targets for layer 1
    # token-weighted over a+b (2 tokens, ln 2) and b (1 token)
    expected = (2 * LN2 + H(0.25, 0.75)) / 3
    assert value[0, "usage_entropy", "combinations (mean)"] == pytest.approx(expected)
    assert set(drift["epoch"]) == {3}


def test_presence_table():
    present = presence_table(2)
    assert present.dtype == torch.bool and present.tolist() == [[True, True], [True, False], [False, True]]


def test_batches_add_up():
    """The tally sums over batches: the three tokens of the top-2 case above in two updates give the frames of one."""
    ids = torch.tensor([[0, 1], [0, 1], [2, 0]])
    weights = torch.tensor([[0.75, 0.25], [0.5, 0.5], [0.625, 0.375]])
    logits = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    modality, combo = torch.tensor([0, 1, 1]), torch.tensor([0, 0, 2])

    def frames(batches):
        tally = RoutingTally(2)
        for rows in batches:
            r = Routing(weights[rows], ids[rows], logits[rows], torch.zeros(len(rows), 3))
            moe = MoEOutput(torch.zeros(len(rows), 2), r, torch.zeros(3), torch.zeros(()))
            info = TokenInfo(modality[rows], combo[rows], 2)
            tally.update(ModelOutput(torch.zeros(1, 2), torch.zeros(()), [moe], info))
        return routing_frames(tally, ("a", "b"), [torch.tensor([0, 1, 0])])

    whole, split = frames([[0, 1, 2]]), frames([[0], [1, 2]])
    for name in whole:
        pd.testing.assert_frame_equal(split[name], whole[name], check_exact=False, rtol=1e-12)
    assert whole["load"]["slots"].tolist() == [3, 2, 1] and whole["load_balance"]["tokens"].item() == 3
