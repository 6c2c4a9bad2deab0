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


def test_mean_ci_edge_cases():
    assert mean_ci([]) == {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    assert mean_ci([0.5, None, float("nan")]) == {"n": 1, "mean": 0.5, "std": None, "ci_low": None, "ci_high": None}
    s = mean_ci([1.0, 3.0])  # mean 2, std sqrt(2), t(0.975, 1) = 12.7062
    assert s["n"] == 2 and s["std"] == pytest.approx(2**0.5)
    assert s["ci_low"] == pytest.approx(2 - 12.7062 * 1.0, rel=1e-5) and s["ci_high"] == pytest.approx(2 + 12.7062)


def test_paired_without_spread_and_with_too_few_pairs():
    same = paired({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})
    assert same["verdict"] == "within noise" and same["p"] == 1.0 and same["diff"] == 0.0
    up = paired({0: 0.6, 1: 0.7}, {0: 0.5, 1: 0.6})  # every difference 0.1: no spread
    assert up["verdict"] == "better" and up["p"] == 0.0 and up["diff"] == pytest.approx(0.1)
    down = paired({0: 0.4, 1: 0.5, 2: 9.0}, {0: 0.5, 1: 0.6})  # seed 2 has no reference: not paired
    assert down["verdict"] == "worse" and down["pairs"] == 2
    few = paired({0: 0.5, 3: 0.9}, {0: 0.4, 1: 0.4})
    assert few == {"pairs": 1, "diff": pytest.approx(0.1), "diff_low": None, "diff_high": None, "p": None,
                   "verdict": "n/a"}  # fmt: skip
    assert paired({}, {})["diff"] is None
    worse = paired({0: 0.1, 1: 0.2, 2: 0.25}, {0: 0.5, 1: 0.5, 2: 0.5})  # differences -0.4, -0.3, -0.25
    assert worse["verdict"] == "worse" and worse["diff_high"] < 0 and 0 < worse["p"] < 0.05


def test_lower_is_better_for_calibration():
    # a Brier score 0.1 lower on every seed is better; the same differences on accuracy would be worse
    lower = paired({0: 0.2, 1: 0.25, 2: 0.3}, {0: 0.3, 1: 0.35, 2: 0.4}, lower_better=True)
    assert lower["verdict"] == "better" and lower["diff"] == pytest.approx(-0.1)
    noisy = paired({0: 0.2, 1: 0.35, 2: 0.3}, {0: 0.3, 1: 0.25, 2: 0.4}, lower_better=True)  # -0.1, +0.1, -0.1
    assert noisy["verdict"] == "within noise"
    assert paired({0: 0.4, 1: 0.5}, {0: 0.3, 1: 0.4}, lower_better=True)["verdict"] == "worse"  # no spread
    assert paired({0: 0.2, 1: 0.3}, {0: 0.3, 1: 0.4}, lower_better=True)["verdict"] == "better"
    spread_up = paired({0: 0.5, 1: 0.6, 2: 0.65}, {0: 0.1, 1: 0.3, 2: 0.3}, lower_better=True)  # +0.4, +0.3, +0.35
    assert spread_up["verdict"] == "worse" and spread_up["diff_low"] > 0
