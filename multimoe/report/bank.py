"""Is the missing-modality bank organised by shared modalities? Flex-MoE's claim, tested on a trained bank.

Shape letters: the legend in ``multimoe/__init__.py`` (S = 2^M - 1 combinations, M modalities, P tokens, D width).

Flex-MoE fills a missing modality m of a sample with combination c by bank[c, m] and reports that the fills of
combinations which share more observed modalities are more similar. For two combinations c1 != c2 that both lack m,
we take the cosine similarity of bank[c1, m] and bank[c2, m] (flattened P x D) and relate it to the number of
modalities c1 and c2 both observe: Spearman and Pearson correlations over all such pairs, with percentile bootstrap
95 % intervals from resampled pairs (seeded). Pairs share bank rows, so they are not independent and the intervals
are optimistic; read them as a guide.

Only combinations that occur in the training split are compared: the other rows are never read, get no gradient and
stay at their N(0, 1) initialisation (shrunk uniformly by decoupled weight decay, AdamW's), whose similarities are ~0
whatever the combinations share. The same statistics on the initial bank (rebuilt from the run's seed, checked
against the rows training never reads and scaled as weight decay scaled them, ``never_read_factor``) are the
baseline, and those on the update (trained - initial) isolate what the gradients wrote into the bank.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from multimoe.batch import combination_name, combinations

FILLS = ("trained", "init", "update")  # the bank as trained, at initialisation, and their difference
FACTOR_TOLERANCE = 1e-4  # never_read_factor's fit, relative (seen: 5e-7 after 200 AdamW steps in float32)
MAX_BOOTSTRAP_CELLS = 4_000_000  # resamples x pairs; fewer resamples (at least 100) beyond it


def _unit(x_NF: np.ndarray) -> np.ndarray:
    x_NF = x_NF.astype(np.float64)
    norm = np.linalg.norm(x_NF, axis=1, keepdims=True)
    return np.divide(x_NF, norm, out=np.zeros_like(x_NF), where=norm > 0)


def bank_pairs(
    bank_SMPD: np.ndarray,
    modalities: tuple[str, ...] | list[str],
    train_count_S: np.ndarray,
    init_SMPD: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per (modality m, combinations c1 < c2 both lacking m, both seen in training): modality, the two
    combinations (names and indices), shared (modalities both observe) and the cosine of their fills, trained and,
    when ``init_SMPD`` is given, at initialisation and of the update."""
    modalities = list(modalities)
    M = len(modalities)
    combos = combinations(M)
    present_SM = np.zeros((len(combos), M), dtype=bool)
    for c, combo in enumerate(combos):
        present_SM[c, list(combo)] = True
    banks = {"trained": bank_SMPD}
    if init_SMPD is not None:
        banks |= {"init": init_SMPD, "update": bank_SMPD - init_SMPD}
    parts = []
    for m in range(M):
        lacking_L = np.flatnonzero(~present_SM[:, m] & (np.asarray(train_count_S) > 0))
        a_N, b_N = (lacking_L[i] for i in np.triu_indices(len(lacking_L), 1))
        part = {"modality": np.full(len(a_N), m), "index_a": a_N, "index_b": b_N}
        part["shared"] = (present_SM[a_N] & present_SM[b_N]).sum(axis=1)
        iu = np.triu_indices(len(lacking_L), 1)
        for name, bank in banks.items():
            u_LF = _unit(bank[lacking_L, m].reshape(len(lacking_L), -1 if len(lacking_L) else 0))
            part[f"cosine_{name}"] = (u_LF @ u_LF.T)[iu]
        parts.append(pd.DataFrame(part))
    frame = pd.concat(parts, ignore_index=True)
    names = {int(c): combination_name(int(c), modalities) for c in np.flatnonzero(np.asarray(train_count_S) > 0)}
    frame.insert(1, "combination_a", frame["index_a"].map(names))
    frame.insert(2, "combination_b", frame["index_b"].map(names))
    frame["modality"] = [modalities[m] for m in frame["modality"]]
    return frame


def _rank_rows(x_BN: np.ndarray) -> np.ndarray:
    """Average ranks along each row (ties share their mean rank), as Spearman needs."""
    return pd.DataFrame(x_BN).rank(axis=1).to_numpy()


def _pearson_rows(x_BN: np.ndarray, y_BN: np.ndarray) -> np.ndarray:
    x = x_BN - x_BN.mean(axis=1, keepdims=True)
    y = y_BN - y_BN.mean(axis=1, keepdims=True)
    den = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (x * y).sum(axis=1) / den, np.nan)


def correlation_ci(
    shared_N: np.ndarray, cosine_N: np.ndarray, resamples: int = 1000, seed: int = 0
) -> dict[str, float | int | None]:
    """Spearman and Pearson correlation of cosine with shared count, with percentile bootstrap 95 % intervals over
    resampled pairs (``resamples``, fewer for very many pairs). None where undefined (fewer than 3 pairs, or no
    spread in either variable)."""
    shared_N = np.asarray(shared_N, dtype=float)
    cosine_N = np.asarray(cosine_N, dtype=float)
    n = len(shared_N)
    resamples = min(resamples, max(100, MAX_BOOTSTRAP_CELLS // max(n, 1)))  # bounded time and memory for many pairs
    out: dict[str, float | int | None] = {"pairs": n, "resamples": resamples}
    keys = ("spearman", "spearman_lo", "spearman_hi", "pearson", "pearson_lo", "pearson_hi")
    if n < 3 or np.ptp(shared_N) == 0 or np.ptp(cosine_N) == 0:
        return {**out, **dict.fromkeys(keys)}
    rng = np.random.default_rng(seed)
    idx_BN = np.concatenate([np.arange(n)[None], rng.integers(0, n, size=(resamples, n))])  # row 0: the data
    xs, ys = shared_N[idx_BN], cosine_N[idx_BN]
    pearson_B = _pearson_rows(xs, ys)
    spearman_B = _pearson_rows(_rank_rows(xs), _rank_rows(ys))

    def ci(v_B: np.ndarray) -> tuple[float | None, float | None]:
        boot = v_B[1:][np.isfinite(v_B[1:])]
        if boot.size == 0:
            return None, None
        lo, hi = np.percentile(boot, [2.5, 97.5])
        return float(lo), float(hi)

    s_lo, s_hi = ci(spearman_B)
    p_lo, p_hi = ci(pearson_B)
    values = (spearman_B[0], s_lo, s_hi, pearson_B[0], p_lo, p_hi)
    return {**out, **{k: (None if v is None else float(v)) for k, v in zip(keys, values)}}


def mantel_test(pairs: pd.DataFrame, column: str, permutations: int = 1000, seed: int = 0) -> dict[str, float | None]:
    """Two-sided permutation p-value of the Spearman correlation between ``column`` and ``shared`` (a Mantel test):
    per modality, the fills are permuted among the combinations that lack it, so every permutation keeps the
    dependence between pairs that share a combination; the pair bootstrap ignores it and is optimistic."""
    if len(pairs) < 3 or pairs["shared"].nunique() < 2 or pairs[column].nunique() < 2:
        return {"mantel_p": None, "permutations": 0}
    rng = np.random.default_rng(seed)
    permutations = min(permutations, max(100, MAX_BOOTSTRAP_CELLS // len(pairs)))
    shared, observed, null = [], [], []
    for _, sub in pairs.groupby("modality", sort=False):
        idx = np.union1d(sub["index_a"], sub["index_b"])
        a, b = np.searchsorted(idx, sub["index_a"]), np.searchsorted(idx, sub["index_b"])
        S_LL = np.zeros((len(idx), len(idx)))
        S_LL[a, b] = S_LL[b, a] = sub[column].to_numpy()
        perm_RL = rng.permuted(np.tile(np.arange(len(idx)), (permutations, 1)), axis=1)
        shared.append(sub["shared"].to_numpy())
        observed.append(S_LL[a, b])
        null.append(S_LL[perm_RL[:, a], perm_RL[:, b]])  # pair (a, b) gets the fills of (perm[a], perm[b])
    ranks_N = _rank_rows(np.concatenate(shared)[None].astype(float))
    rho_R = _pearson_rows(
        np.broadcast_to(ranks_N, (permutations + 1, ranks_N.shape[1])),
        _rank_rows(np.concatenate([np.concatenate(observed)[None], np.concatenate(null, axis=1)])),
    )
    p = (1 + np.sum(np.abs(rho_R[1:]) >= abs(rho_R[0]) - 1e-12)) / (permutations + 1)
    return {"mantel_p": float(p), "permutations": permutations}


def claim_frames(pairs: pd.DataFrame, resamples: int = 1000, seed: int = 0) -> dict[str, pd.DataFrame]:
    """``bank_claim``: per fill (trained, init, update) the correlations with their bootstrap intervals and the
    Mantel permutation p-value of the Spearman correlation; ``bank_by_shared``: per fill and shared count, the number
    of pairs and the mean and std of the cosine."""
    claim, by_shared = [], []
    for fill in FILLS:
        col = f"cosine_{fill}"
        if col not in pairs:
            continue
        claim.append(
            {
                "fill": fill,
                **correlation_ci(pairs["shared"], pairs[col], resamples, seed),
                **mantel_test(pairs, col, resamples, seed),
            }
        )
        g = pairs.groupby("shared")[col]
        by_shared.append(
            pd.DataFrame(
                {"fill": fill, "shared": g.mean().index, "pairs": g.size().values, "mean": g.mean().values}
            ).assign(std=g.std(ddof=0).values)
        )
    claim_cols = [
        "fill",
        "pairs",
        "resamples",
        "spearman",
        "spearman_lo",
        "spearman_hi",
        "pearson",
        "pearson_lo",
        "pearson_hi",
        "mantel_p",
        "permutations",
    ]
    return {
        "bank_claim": pd.DataFrame(claim, columns=claim_cols),
        "bank_by_shared": (
            pd.concat(by_shared, ignore_index=True)
            if by_shared
            else pd.DataFrame(columns=["fill", "shared", "pairs", "mean", "std"])
        ),
    }


def bank_rows(
    bank_SMPD: np.ndarray,
    modalities: tuple[str, ...] | list[str],
    train_count_S: np.ndarray,
    init_SMPD: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per fill that can be read (combination c, modality m it lacks): training samples that read it, its
    norm, and, with the initial bank, its cosine with its initial value and the relative size of its update."""
    modalities = list(modalities)
    combos = combinations(len(modalities))
    rows = []
    for c, combo in enumerate(combos):
        for m, name in enumerate(modalities):
            if m in combo:
                continue
            row = {
                "combination": combination_name(combo, modalities),
                "index": c,
                "modality": name,
                "train_samples": int(train_count_S[c]),
                "norm": float(np.linalg.norm(bank_SMPD[c, m])),
            }
            if init_SMPD is not None:
                v, v0 = bank_SMPD[c, m].ravel().astype(np.float64), init_SMPD[c, m].ravel().astype(np.float64)
                row["cosine_to_init"] = float(v @ v0 / max(np.linalg.norm(v) * np.linalg.norm(v0), 1e-30))
                row["relative_update"] = float(np.linalg.norm(v - v0) / max(np.linalg.norm(v0), 1e-30))
            rows.append(row)
    return pd.DataFrame(rows)


def never_read_factor(bank_SMPD: np.ndarray, init_SMPD: np.ndarray, num_modalities: int) -> float | None:
    """The factor f with which the entries training can never read (bank[c, m] with m observed in c) equal
    f x ``init_SMPD``, or None where no factor fits them (then ``init_SMPD`` is not the run's initialisation). They
    get no gradient, so only decoupled weight decay moves them: by 1 - lr x weight_decay at every step, the same for
    all (f = 1 without it). f is their least-squares factor, accepted within float32 rounding (``FACTOR_TOLERANCE`` of
    the largest initial entry)."""
    combos = combinations(num_modalities)
    never_read = [(c, m) for c, combo in enumerate(combos) for m in combo]
    trained = np.concatenate([bank_SMPD[c, m].ravel() for c, m in never_read]).astype(np.float64)
    init = np.concatenate([init_SMPD[c, m].ravel() for c, m in never_read]).astype(np.float64)
    scale = float(init @ init)
    if scale == 0:
        return None
    f = float(trained @ init) / scale
    return f if np.abs(trained - f * init).max() <= FACTOR_TOLERANCE * np.abs(init).max() else None
