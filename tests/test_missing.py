import pytest
import torch

from multimoe.batch import combinations
from multimoe.config import ConfigError
from multimoe.missing import BankFill
from multimoe.registry import FILLS


def test_bank_shape_and_lookup_by_combination():
    M, P, D = 3, 4, 5
    bank = BankFill(M, P, D)
    assert bank.bank_SMPD.shape == (2**M - 1, M, P, D)
    combo_B = torch.tensor([0, 3, 6])
    out = bank(combo_B, None)
    assert out.shape == (3, M, P, D)
    for b, c in enumerate(combo_B.tolist()):
        torch.testing.assert_close(out[b], bank.bank_SMPD[c])


def test_bank_fills_the_missing_modality_of_its_combination():
    # combination (0, 2) of 3 modalities -> modality 1 is filled from bank[index of (0, 2), 1]
    idx = combinations(3).index((0, 2))
    bank = BankFill(3, 2, 4)
    assert torch.equal(bank(torch.tensor([idx]), None)[0, 1], bank.bank_SMPD[idx, 1])


@pytest.mark.parametrize("kind", FILLS.names())
def test_fills_have_static_shapes(kind):
    fill = FILLS.build(kind, 2, 3, 4)
    present = torch.tensor([[True, True], [True, False], [False, True]])
    assert fill(torch.tensor([0, 1, 2]), present).shape == (3, 2, 3, 4)


def test_additive_fill_depends_on_the_observed_set_and_scales_quadratically():
    fill = FILLS.build("additive", 17, 2, 4)
    assert sum(p.numel() for p in fill.parameters()) == 17 * 2 * 4 + 17 * 17 * 2 * 4  # a bank would hold 131071 rows
    a = torch.zeros(1, 17, dtype=torch.bool)
    a[0, 0] = True
    b = a.clone()
    b[0, 1] = True
    expected = fill.token_MPD[5] + fill.from_MMPD[0, 5] + fill.from_MMPD[1, 5]
    torch.testing.assert_close(fill(torch.tensor([0]), b)[0, 5], expected)
    assert not torch.allclose(fill(torch.tensor([0]), a), fill(torch.tensor([0]), b))


def test_unknown_fill_lists_choices():
    with pytest.raises(ConfigError, match="bank"):
        FILLS.build("mean-ish", 2, 3, 4)
