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
