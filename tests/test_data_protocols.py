"""Missingness protocols (multimoe/data/protocols.py): rates, rescue from the natural set, masks from the seed only."""

import numpy as np

from multimoe.data.protocols import apply_protocol


def test_mcar_rate_and_never_empty():
    natural = np.ones((20000, 4), dtype=bool)
    for rate in (0.0, 0.2, 0.4, 0.6, 0.8):
        p = apply_protocol(natural, f"mcar:{rate}", seed=3)
        assert p.any(axis=1).all()
        # drawn rate before rescue is `rate`; rescue re-adds one modality to rows that lost all (rate^4 of rows)
        expected_missing = rate - rate**4 / 4
        assert abs((~p).mean() - expected_missing) < 0.01


def test_mcar_keeps_natural_missingness_and_rescues_from_natural_set():
    rng = np.random.default_rng(0)
    natural = rng.random((5000, 5)) < 0.7
    natural[~natural.any(axis=1), 0] = True
    p = apply_protocol(natural, "mcar:0.8", seed=1)
    assert not (p & ~natural).any()
    assert p.any(axis=1).all()


def test_masks_depend_only_on_the_seed():
    natural = np.ones((100, 3), dtype=bool)
    a, b = apply_protocol(natural, "mcar:0.4", 7), apply_protocol(natural, "mcar:0.4", 7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, apply_protocol(natural, "mcar:0.4", 8))
    assert np.array_equal(apply_protocol(natural, "natural", 7), natural)


def test_natural_and_rate_zero_return_a_copy_of_the_natural_mask():
    natural = np.array([[True, False], [True, True]])
    for spec in ("natural", "mcar:0.0"):
        p = apply_protocol(natural, spec, seed=0)
        assert (p == natural).all() and p is not natural and p.dtype == bool
    assert apply_protocol(natural.astype(int), "mcar:0.5", seed=0).dtype == bool


def test_mcar_mask_is_pinned_for_a_seed():
    """The masks behind every stored benchmark cell: the seed's draw must not change (a change would silently make
    new cells incomparable with stored ones)."""
    p = apply_protocol(np.ones((12, 4), dtype=bool), "mcar:0.5", seed=0).astype(int).tolist()
    assert p == [[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0],
                 [0, 0, 1, 0], [1, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 1, 1], [0, 1, 1, 1]]  # fmt: skip


def test_cpm_mask_is_pinned_for_a_seed():
    """As the MCAR draw above: cells stored under cpm:R rest on this draw."""
    p = apply_protocol(np.ones((8, 3), dtype=bool), "cpm:0.5", seed=0).astype(int).tolist()
    assert p == [[1, 0, 0], [0, 0, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 1], [1, 1, 1]]
    assert sum(map(sum, p)) == round(0.5 * 8 * 3)  # the definition: round((1 - R) M N) present


def test_cpm_masks_meet_the_definition():
    # CPM-Nets / UIMC: eta = missing (sample, view) entries / (V * N); every sample keeps a view; one mask for all rows
    N, V = 2000, 6
    natural = np.ones((N, V), dtype=bool)
    for eta in (0.1, 0.3, 0.5, 0.7, 0.8, 0.9):
        p = apply_protocol(natural, f"cpm:{eta}", seed=5)
        assert p.any(axis=1).all()
        if 1 - eta <= 1 / V:  # eta = 0.9 (0.1 <= 1/6): exactly one view per sample, 5/6 of the entries missing
            assert (p.sum(axis=1) == 1).all()
            continue
        assert abs((~p).mean() - eta) <= 0.005
        assert p.sum() == round((1 - eta) * N * V)  # the exact count: 10800 present entries at eta = 0.1, ...
        # the further entries are spread over the views: each view misses close to eta of its samples
        assert np.abs((~p).mean(axis=0) - eta).max() < 0.05


def test_cpm_first_view_is_uniform_and_the_draw_is_seeded():
    N, V = 60000, 6
    kept = apply_protocol(np.ones((N, V), dtype=bool), "cpm:0.9", seed=0)  # one view each
    counts = kept.sum(axis=0)  # each ~ N / V = 10000, sd sqrt(N * 1/6 * 5/6) = 91
    assert counts.sum() == N and np.abs(counts - N / V).max() < 400
    small = np.ones((50, 3), dtype=bool)
    assert (apply_protocol(small, "cpm:0.4", 1) == apply_protocol(small, "cpm:0.4", 1)).all()
    assert (apply_protocol(small, "cpm:0.4", 1) != apply_protocol(small, "cpm:0.4", 2)).any()


def test_cpm_never_fills_a_natural_gap():
    # 4 samples x 2 views, eta = 0.25: round(0.75 * 8) = 6 entries present, but rows 0 and 1 lack view 1 naturally,
    # so only 6 entries can be present at all: every natural entry is kept and nothing else
    natural = np.array([[True, False], [True, False], [True, True], [True, True]])
    p = apply_protocol(natural, "cpm:0.25", seed=0)
    assert (p == natural).all()
    # eta = 0.5: 4 entries, one per sample; rows 0 and 1 can only keep view 0
    p = apply_protocol(natural, "cpm:0.5", seed=0)
    assert p.sum() == 4 and (p.sum(axis=1) == 1).all() and p[:2, 0].all() and not (p & ~natural).any()


def test_cpm_names_parse():
    import pytest

    from multimoe.config import parse_missing
    from multimoe.errors import ConfigError

    assert parse_missing("cpm:0.5") == ("cpm", 0.5)
    for bad in ("cpm:1", "cpm:", "cpm:x", "cpm:-0.1"):
        with pytest.raises(ConfigError, match="cpm:R"):
            parse_missing(bad)
