"""Conf-SMoE (multimoe/confsmoe.py, configs/confsmoe.yaml): the confidence gate, its loss, the two imputations."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_model import ALL_PRESENCE3, SCHEMA3, make_batch

from multimoe.config import ModelConfig
from multimoe.confsmoe import ConfidenceMoE, ConfSMoE, confidence_loss, group_mean, top_tokens
from multimoe.data.dataset import MultimodalData
from multimoe.model import build_model
from multimoe.moe import TokenInfo
from multimoe.registry import load_config

CONFIGS = Path(__file__).parents[1] / "configs"


def small_confsmoe(*overrides: str, pool_rows: int = 0) -> ModelConfig:
    """configs/confsmoe.yaml at toy widths."""
    cfg = load_config(
        CONFIGS / "confsmoe.yaml",
        ["model.dim=8", "model.tokens=2", "model.heads=2", "model.moe.hidden=8", "model.moe.num_experts=4", *overrides],
    ).model
    cfg.pool_rows = pool_rows
    return cfg


def pool_data(schema, present_NM: torch.Tensor, offset: float = 0.0) -> MultimodalData:
    """Training rows whose values say which row they are (row n: every feature n + offset)."""
    N = present_NM.shape[0]
    values = {m: (torch.arange(N, dtype=torch.float32)[:, None] + offset).expand(N, f).clone()
              for m, f in zip(schema.modalities, schema.features)}  # fmt: skip
    missing = {m: torch.zeros(N, f, dtype=torch.bool) for m, f in zip(schema.modalities, schema.features)}
    labels_N = torch.zeros(N, dtype=torch.long)
    return MultimodalData(schema, values, missing, present_NM, labels_N, torch.arange(N).numpy())


def test_confidence_loss_is_the_mse_to_the_true_label_probability_by_hand():
    c_A = torch.tensor([0.5, 0.2])
    logits_AC = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # p(class 0) = 1/2 and 3/4
    expected = ((0.5 - 0.5) ** 2 + (0.2 - 0.75) ** 2) / 2
    assert float(confidence_loss(c_A, logits_AC, torch.tensor([0, 0]))) == pytest.approx(expected, abs=1e-7)


def test_the_target_is_not_detached_as_in_its_code():
    logits_AC = torch.zeros(2, 3, requires_grad=True)
    confidence_loss(torch.tensor([0.9, 0.1]), logits_AC, torch.tensor([0, 2])).backward()
    assert logits_AC.grad is not None and logits_AC.grad.abs().sum() > 0


@pytest.mark.parametrize("router", ["trained", "frozen"])
def test_output_is_the_confidence_weighted_sum_of_the_top_k_experts(router):
    cfg = small_confsmoe(f"model.confsmoe.router={router}")
    moe = ConfidenceMoE(cfg, 3, 4).eval()
    x_TD = torch.randn(10, 8)
    info = TokenInfo(torch.arange(10) % 3, torch.zeros(10, dtype=torch.long), 3)
    with torch.no_grad():
        out = moe(x_TD, info)
        routing = moe.router(x_TD, info.modality_T)
        expected = torch.zeros(10, 8)
        for t in range(10):
            for k, e in enumerate(routing.ids_TK[t].tolist()):
                y = F.gelu(x_TD[t] @ moe.w1_EDH[e] + moe.b1_EH[e]) @ moe.w2_EHD[e] + moe.b2_ED[e]
                z = F.layer_norm(y, (8,)) * moe.conf_gain_ED[e] + moe.conf_shift_ED[e]
                c = torch.sigmoid(z @ moe.conf_w_ED[e] + moe.conf_b_E[e])
                assert float(out.routing.weights_TK[t, k]) == pytest.approx(float(c), abs=1e-6)  # the report's weights
                expected[t] += c * y
    assert torch.allclose(out.out_TD, expected, atol=1e-5)


@pytest.mark.parametrize("router, learns", [("trained", True), ("frozen", False)])
def test_only_the_trained_router_gets_a_gradient(router, learns):
    moe = ConfidenceMoE(small_confsmoe(f"model.confsmoe.router={router}"), 3, 4).train()
    info = TokenInfo(torch.arange(12) % 3, torch.zeros(12, dtype=torch.long), 3)
    out = moe(torch.randn(12, 8), info, labels_T=torch.randint(0, 4, (12,)))
    (out.out_TD.square().sum() + out.aux_loss).backward()
    grad = moe.router.weight_GJD.grad
    assert (grad is not None and grad.abs().sum() > 0) == learns
    assert moe.prob_head.weight.grad.abs().sum() > 0 and moe.conf_w_ED.grad.abs().sum() > 0


def test_expert_mean_confidence_is_the_mean_per_modality_and_expert():
    values = torch.tensor([0.2, 0.4, 0.9, 0.5])
    groups = torch.tensor([0, 0, 3, 1])
    assert torch.allclose(group_mean(values, groups, 2), torch.tensor([0.3, 0.3, 0.9, 0.5]))


def test_post_imputation_keeps_a_quarter_of_the_other_tokens():
    assert top_tokens(6, 16) == 20 and top_tokens(2, 2) == 1 and top_tokens(3, 2) == 1


def test_pre_imputation_averages_training_rows_that_have_the_modality():
    present_NM = torch.tensor([[True, True, True], [False, True, True], [True, False, True], [True, True, False]])
    model = build_model(small_confsmoe(pool_rows=4), SCHEMA3)
    model.pool.fill(pool_data(SCHEMA3, present_NM, offset=1.0))  # row n holds n + 1
    model.eval()
    batch = make_batch(SCHEMA3, torch.tensor([[False, True, False], [True, True, True]]))
    filled = model.pre_impute(batch)
    # modality a: rows 0, 2, 3 have it (values 1, 3, 4); modality c: rows 0, 1, 2 (values 1, 2, 3)
    for m, allowed in (("a", {1.0, 3.0, 4.0}), ("c", {1.0, 2.0, 3.0})):
        mean = float(filled.inputs[m][0, 0])
        assert min(allowed) <= mean <= max(allowed)
        assert torch.equal(filled.inputs[m][1], batch.inputs[m][1])  # an observed modality is untouched
    assert torch.equal(filled.inputs["b"], batch.inputs["b"])
    again = model.pre_impute(batch)
    assert all(torch.equal(filled.inputs[m], again.inputs[m]) for m in SCHEMA3.modalities)  # fixed seed in eval


def test_pre_imputation_draws_ten_rows_with_replacement():
    present_NM = torch.tensor([[True, True, True]] + [[False, True, True]] * 5)
    model = build_model(small_confsmoe(pool_rows=6), SCHEMA3)
    model.pool.fill(pool_data(SCHEMA3, present_NM, offset=7.0))
    filled = model.eval().pre_impute(make_batch(SCHEMA3, torch.tensor([[False, True, True]])))
    assert torch.allclose(filled.inputs["a"], torch.full((1, 5), 7.0))  # only row 0 has a: ten times row 0


def test_complete_samples_are_not_changed_by_incomplete_ones_in_the_batch():
    model = build_model(small_confsmoe("model.layers=2", pool_rows=7), SCHEMA3)
    assert isinstance(model, ConfSMoE)
    model.pool.fill(pool_data(SCHEMA3, ALL_PRESENCE3))
    model.eval()
    batch = make_batch(SCHEMA3, ALL_PRESENCE3)
    full = ALL_PRESENCE3.all(dim=1).nonzero().flatten()
    alone = dataclasses.replace(
        batch,
        inputs={m: v[full] for m, v in batch.inputs.items()},
        cell_missing={m: v[full] for m, v in batch.cell_missing.items()},
        present_BM=batch.present_BM[full],
        labels_B=batch.labels_B[full],
        combo_B=batch.combo_B[full],
    )
    with torch.no_grad():
        assert torch.allclose(model(batch).logits_BC[full], model(alone).logits_BC, atol=1e-5)
