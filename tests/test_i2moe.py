"""I2MoE (multimoe/i2moe.py, configs/i2moe.yaml): interaction losses, interaction weights, the complete-case
protocol and its all-samples variant (configs/i2moe-all.yaml)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_model import ALL_PRESENCE3, SCHEMA3, make_batch

from multimoe.batch import combination_index
from multimoe.config import DataConfig, ModelConfig
from multimoe.data.prepare import prepare
from multimoe.data.table import build_table
from multimoe.errors import DataError
from multimoe.i2moe import (
    I2MoE,
    encode_tokens,
    interaction_loss,
    perturbed,
    redundancy_loss,
    synergy_loss,
    uniqueness_loss,
)
from multimoe.model import build_model
from multimoe.registry import load_config

CONFIGS = Path(__file__).parents[1] / "configs"


def small_i2moe(**settings) -> ModelConfig:
    """configs/i2moe.yaml at toy widths."""
    cfg = load_config(
        CONFIGS / "i2moe.yaml",
        ["model.dim=8", "model.tokens=2", "model.heads=2", "model.dense_hidden=8", "model.i2moe.reweight_hidden=8"],
    ).model
    for k, v in settings.items():
        setattr(cfg.i2moe, k, v)
    return cfg


# the tiny case: 2 modalities, 1 sample, 2 classes; variants: clean, modality 0 perturbed, modality 1 perturbed
CLEAN, PERT0, PERT1 = [0.0, 0.0], [0.0, 2.0], [3.0, 0.0]
LOGITS_VBC = torch.tensor([[CLEAN], [PERT0], [PERT1]])
BOTH = torch.tensor([[True, True]])


def test_uniqueness_loss_is_the_triplet_margin_by_hand():
    # expert 0: anchor clean, negative = 0 perturbed (distance 2), positive = 1 perturbed (distance 3)
    assert float(uniqueness_loss(LOGITS_VBC, 0, BOTH)) == pytest.approx(3 - 2 + 1, abs=1e-5)
    # expert 1: negative = 1 perturbed (3), positive = 0 perturbed (2): 2 - 3 + 1 = 0
    assert float(uniqueness_loss(LOGITS_VBC, 1, BOTH)) == pytest.approx(0.0, abs=1e-5)


def test_synergy_and_redundancy_are_mean_cosines_by_hand():
    logits_VBC = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])  # cos 0 and 1/sqrt(2)
    cos = (0 + 1 / math.sqrt(2)) / 2
    assert float(synergy_loss(logits_VBC, BOTH)) == pytest.approx(cos, abs=1e-6)
    assert float(redundancy_loss(logits_VBC, BOTH)) == pytest.approx(1 - cos, abs=1e-6)


def test_interaction_loss_averages_the_m_plus_2_terms():
    logits_EVBC = torch.stack([LOGITS_VBC, LOGITS_VBC, LOGITS_VBC, LOGITS_VBC])  # 2 uniqueness, synergy, redundancy
    syn = (0.0 + 0.0) / 2  # cos(clean = 0, anything) = 0 (F.normalize of a zero vector is zero)
    red = 1.0 - syn
    expected = (2.0 + 0.0 + syn + red) / 4
    assert float(interaction_loss(logits_EVBC, BOTH)) == pytest.approx(expected, abs=1e-5)


def test_terms_whose_perturbed_modality_is_absent_are_left_out():
    # sample 1 lacks modality 1: its triplets (which need both) and its j = 1 cosine do not count
    logits_VBC = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]], [[1.0, 1.0], [-1.0, 0.0]]])
    present_BM = torch.tensor([[True, True], [True, False]])
    expected_syn = (0 + 1 / math.sqrt(2) + 1) / 3  # (b0, j0), (b0, j1), (b1, j0)
    assert float(synergy_loss(logits_VBC, present_BM)) == pytest.approx(expected_syn, abs=1e-6)
    alone = uniqueness_loss(logits_VBC[:, :1], 0, present_BM[:1])
    assert float(uniqueness_loss(logits_VBC, 0, present_BM)) == pytest.approx(float(alone), abs=1e-6)


def test_perturbed_replaces_one_modality_per_variant():
    tokens_BMPD = torch.randn(2, 3, 2, 4)
    out = perturbed(tokens_BMPD, torch.arange(3)).view(4, 2, 3, 2, 4)
    assert torch.equal(out[0], tokens_BMPD)
    for j in range(3):
        same = [m for m in range(3) if m != j]
        assert torch.equal(out[1 + j][:, same], tokens_BMPD[:, same])
        assert not torch.equal(out[1 + j][:, j], tokens_BMPD[:, j])


def test_weights_sum_to_one_and_final_logits_are_their_weighted_sum():
    model = build_model(small_i2moe(), SCHEMA3).eval()
    assert isinstance(model, I2MoE) and model.num_experts == 3 + 2
    batch = make_batch(SCHEMA3, ALL_PRESENCE3)
    with torch.no_grad():
        out = model(batch)
        tokens_BMPD = encode_tokens(model.encoders, model.fill, batch, SCHEMA3.modalities)
        _, w_BE = model.interaction_weights(tokens_BMPD)
        expert_EBC = torch.stack([expert(tokens_BMPD) for expert in model.experts])
    assert torch.allclose(w_BE.sum(dim=1), torch.ones(7))
    assert torch.allclose(out.logits_BC, (w_BE.t()[:, :, None] * expert_EBC).sum(dim=0), atol=1e-6)
    shown = out.moe[0].routing.weights_TK.view(7, -1, 5)  # every token of a sample carries its sample's weights
    assert torch.allclose(shown, w_BE[:, None, :].expand_as(shown))


def test_training_step_adds_the_interaction_loss_with_a_gradient_to_every_expert():
    model = build_model(small_i2moe(), SCHEMA3).train()
    out = model(make_batch(SCHEMA3, ALL_PRESENCE3))
    assert float(out.aux_loss.detach()) > 0
    out.aux_loss.backward()
    for expert in model.experts:
        assert expert.head.weight.grad is not None and expert.head.weight.grad.abs().sum() > 0


def test_the_reduced_perturbation_ablation_perturbs_k_modalities():
    model = build_model(small_i2moe(perturbed=2), SCHEMA3).train()
    out = model(make_batch(SCHEMA3, ALL_PRESENCE3))
    assert torch.isfinite(out.aux_loss)


def synthetic(missing: str, complete: bool):
    cfg = DataConfig(name="synthetic", missing=missing, complete_cases=complete)
    cfg.synthetic.samples = 400
    cfg.synthetic.modalities = 3
    return build_table(cfg), cfg


def test_complete_cases_keeps_only_samples_with_every_modality():
    table, cfg = synthetic("mcar:0.3", complete=True)
    splits = prepare(table, cfg, seed=0)
    everything = prepare(*synthetic("mcar:0.3", complete=False), seed=0)
    for split, full in ((splits.train, everything.train), (splits.val, everything.val), (splits.test, everything.test)):
        assert bool(split.present_NM.all()) and 0 < len(split) < len(full)
        assert len(split) == int(full.present_NM.all(dim=1).sum())
        assert set(split.rows_N.tolist()) == set(full.rows_N[full.present_NM.all(dim=1).numpy()].tolist())
    assert (combination_index(splits.test.present_NM) == 0).all()


def test_complete_cases_without_a_complete_sample_is_a_clear_error():
    table, cfg = synthetic("mcar:0.95", complete=True)
    with pytest.raises(DataError, match="complete_cases.*has none"):
        prepare(table, cfg, seed=0)


def test_the_variants_differ_only_in_the_complete_case_option():
    faithful, ours = load_config(CONFIGS / "i2moe.yaml"), load_config(CONFIGS / "i2moe-all.yaml")
    assert faithful.data.complete_cases and not ours.data.complete_cases
    ours.data.complete_cases, ours.method = True, faithful.method
    assert ours == faithful
    assert np.isclose(faithful.train.gate_loss_weight, 0.3)  # lambda_int of its ADNI transformer script
