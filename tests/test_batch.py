import itertools

import pytest
import torch

from multimoe.batch import combination_index, combination_name, combinations


def test_combination_order_is_published_for_four_modalities():
    combos = combinations(4)
    assert len(combos) == 15
    assert combos[0] == (0, 1, 2, 3)
    assert combos[1:5] == ((0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3))
    assert combos[5:11] == ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
    assert combos[11:] == ((0,), (1,), (2,), (3,))


@pytest.mark.parametrize("M", [1, 2, 3, 5, 6])
def test_combination_index_inverts_the_order(M):
    combos = combinations(M)
    assert len(combos) == 2**M - 1
    present = torch.zeros(len(combos), M, dtype=torch.bool)
    for i, c in enumerate(combos):
        present[i, list(c)] = True
    assert combination_index(present).tolist() == list(range(len(combos)))


def test_sizes_descend():
    sizes = [len(c) for c in combinations(5)]
    assert sizes == sorted(sizes, reverse=True)
    assert all(list(c) == sorted(c) for c in combinations(5))
    assert set(combinations(3)) == {c for r in (1, 2, 3) for c in itertools.combinations(range(3), r)}


def test_sample_without_modality_is_rejected_naming_the_row():
    present = torch.tensor([[True, False], [False, False], [False, True]])
    with pytest.raises(ValueError, match=r"row\(s\) \[1\] have no present modality"):
        combination_index(present)


def test_combination_name_uses_modality_names():
    assert combination_name((0, 2), ["fou", "fac", "kar"]) == "fou+kar"
    assert combination_name(0, ["a", "b"]) == "a+b"


def test_modality_dropout_hides_but_never_empties():
    from multimoe.batch import drop_modalities

    g = torch.Generator().manual_seed(0)
    present = torch.rand(4000, 4, generator=g) < 0.8
    present[~present.any(1), 0] = True
    kept = drop_modalities(present, 0.5, g)
    assert kept.any(1).all() and not (kept & ~present).any()
    assert 0.45 < 1 - kept.sum() / present.sum() < 0.55 - 0.0  # about half hidden (a few rescued)
