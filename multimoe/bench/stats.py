"""Statistics over seeds: mean, standard deviation (ddof=1) and a 95 % t confidence interval per cell; each method
against the reference on the seeds both finished (same splits, same masks): the mean paired difference with its
95 % t interval and a paired t-test; "better" / "worse" when the interval excludes 0, else "within noise". No
correction for multiple comparisons is applied (say so when reading). The primary metric is accuracy for
multiclass tasks and the positive-class AUC for binary ones.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

MARK = {"better": "▲", "worse": "▼", "within noise": "≈", "n/a": ""}


def primary_metric(classes: int) -> str:
    return "auc" if classes == 2 else "accuracy"


def mean_ci(values) -> dict:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    n = len(v)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    mean = float(v.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci_low": None, "ci_high": None}
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def paired(method: dict[int, float], reference: dict[int, float], lower_better: bool = False) -> dict:
    """Paired comparison over the seeds both have: mean difference, its 95 % t interval, p, verdict
    (``lower_better``: a metric such as the Brier score, where a negative difference is the better one)."""
    seeds = sorted(set(method) & set(reference))
    d = np.array([method[s] - reference[s] for s in seeds], dtype=float)
    if len(d) < 2:
        return {"pairs": len(d), "diff": float(d.mean()) if len(d) else None, "diff_low": None, "diff_high": None,
                "p": None, "verdict": "n/a"}  # fmt: skip
    ci = mean_ci(d)
    if ci["std"] == 0:
        verdict = "within noise" if ci["mean"] == 0 else ("better" if (ci["mean"] > 0) != lower_better else "worse")
        p = 1.0 if ci["mean"] == 0 else 0.0
    else:
        t_stat = ci["mean"] / (ci["std"] / math.sqrt(len(d)))
        p = float(2 * stats.t.sf(abs(t_stat), len(d) - 1))  # paired t-test
        above, below = ci["ci_low"] > 0, ci["ci_high"] < 0
        if lower_better:
            above, below = below, above
        verdict = "better" if above else "worse" if below else "within noise"
    return {"pairs": len(d), "diff": ci["mean"], "diff_low": ci["ci_low"], "diff_high": ci["ci_high"], "p": p,
            "verdict": verdict}  # fmt: skip
