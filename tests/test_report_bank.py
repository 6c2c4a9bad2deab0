"""Flex-MoE's bank-similarity claim (multimoe/report/bank.py) on constructed banks."""

import numpy as np
import pytest
import torch

from multimoe.batch import combinations
from multimoe.report.bank import bank_pairs, claim_frames, correlation_ci, mantel_test


def test_bank_claim_detects_similarity_that_grows_with_shared_modalities():
    M, P, D = 4, 2, 8
    g = torch.Generator().manual_seed(0)
    per_modality_MF = torch.randn(M, P * D, generator=g)
    bank = torch.randn((1 << M) - 1, M, P * D, generator=g) * 0.3
    for c, combo in enumerate(combinations(M)):
        bank[c] += per_modality_MF[list(combo)].sum(dim=0)  # fills built from the observed modalities
    bank = bank.view(-1, M, P, D).numpy()
    seen = np.ones(len(bank), dtype=int)
    seen[combinations(M).index((0, 1))] = 0  # a combination never seen in training is left out
    pairs = bank_pairs(bank, ["a", "b", "c", "d"], seen)
    assert not (pairs["combination_a"].eq("a+b") | pairs["combination_b"].eq("a+b")).any()
    claim = claim_frames(pairs, resamples=200, seed=0)["bank_claim"].iloc[0]
    assert claim["spearman"] > 0.5 and claim["spearman_lo"] > 0.3 and claim["pearson"] > 0.5
    assert claim["mantel_p"] < 0.02
    noise = correlation_ci(pairs["shared"], np.random.default_rng(0).normal(size=len(pairs)), 200, 0)
    assert noise["spearman_lo"] < 0 < noise["spearman_hi"]
    random_bank = np.random.default_rng(1).normal(size=bank.shape)
    assert mantel_test(bank_pairs(random_bank, ["a", "b", "c", "d"], seen), "cosine_trained", 200)["mantel_p"] > 0.05
    assert correlation_ci([1, 1, 1], [0.1, 0.2, 0.3])["spearman"] is None  # no spread: undefined, no crash


def test_bank_claim_without_pairs_is_undefined_not_an_error():
    """support2 under `natural`: only the full set and one partial combination occur, so no two trained
    combinations lack the same modality."""
    bank = np.random.default_rng(0).normal(size=(31, 5, 2, 4))
    seen = np.zeros(31, dtype=int)
    seen[[0, 1]] = 1
    pairs = bank_pairs(bank, ["a", "b", "c", "d", "e"], seen, init_SMPD=bank * 0.5)
    assert pairs.empty and "cosine_update" in pairs
    claim = claim_frames(pairs)["bank_claim"]
    assert list(claim["pairs"]) == [0, 0, 0] and claim["spearman"].isna().all()


def test_the_never_read_rows_factor():
    """Two modalities: combinations (a, b), (a), (b); the never-read entries are bank[0, a], bank[0, b], bank[1, a]
    and bank[2, b]. Scaled by 0.9 there (the read ones changed freely): f = 0.9; equal: exactly 1; one never-read
    entry moved by 0.01 (beyond float32 rounding): None; an initial bank of zeros: None."""
    from multimoe.report.bank import never_read_factor

    init = np.random.default_rng(0).normal(size=(3, 2, 2, 4)).astype(np.float32)
    trained = init * np.float32(0.9)
    trained[1, 1] += 5.0  # read entries: bank[1, b] and bank[2, a]
    trained[2, 0] -= 3.0
    assert never_read_factor(trained, init, 2) == pytest.approx(0.9, abs=1e-7)
    assert never_read_factor(init.copy(), init, 2) == 1.0
    moved = trained.copy()
    moved[2, 1, 0, 0] += 0.01
    assert never_read_factor(moved, init, 2) is None
    assert never_read_factor(trained, np.zeros_like(init), 2) is None
