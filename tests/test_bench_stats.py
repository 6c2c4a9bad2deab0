"""Statistics over seeds and paired comparisons (multimoe/bench/stats.py)."""

import pytest

from multimoe.bench.stats import mean_ci, paired


def test_statistics():
    s = mean_ci([0.8, 0.9, 1.0])
    assert s["mean"] == pytest.approx(0.9) and s["std"] == pytest.approx(0.1)
    assert s["ci_high"] - s["mean"] == pytest.approx(4.302653 * 0.1 / 3**0.5, rel=1e-5)  # t(0.975, 2)
    better = paired({0: 0.9, 1: 0.92, 2: 0.95}, {0: 0.8, 1: 0.81, 2: 0.86})
    assert better["verdict"] == "better" and better["diff"] == pytest.approx(0.1, abs=1e-9)
    noisy = paired({0: 0.9, 1: 0.7, 2: 0.95}, {0: 0.8, 1: 0.85, 2: 0.86})
    assert noisy["verdict"] == "within noise"
    assert paired({0: 0.5}, {0: 0.4})["verdict"] == "n/a"
