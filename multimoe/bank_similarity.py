"""Is the missing-modality bank organised by shared modalities? Flex-MoE's claim, tested on a trained bank.

Shapes: C = 2^M - 1 combinations, M modalities, P tokens, D width.

Flex-MoE fills a missing modality m of a sample with combination c by bank[c, m] and reports that the fills of
combinations which share more observed modalities are more similar. For two combinations c1 != c2 that both lack m,
we take the cosine similarity of bank[c1, m] and bank[c2, m] (flattened P x D) and relate it to the number of
modalities c1 and c2 both observe: Spearman and Pearson correlations over all such pairs, with percentile bootstrap
95 % intervals from resampled pairs (seeded). Pairs share bank rows, so they are not independent and the intervals
are optimistic; read them as a guide.

Only combinations that occur in the training split are compared: the other rows are never read, get no gradient and
stay at their N(0, 1) initialisation, whose similarities are ~0 whatever the combinations share. The same
statistics on the initial bank (rebuilt from the run's seed, and checked against the rows training never reads) are
the baseline, and those on the update (trained - initial) isolate what training wrote into the bank.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from multimoe.batch import combination_name, combinations

FILLS = ("trained", "init", "update")  # the bank as trained, at initialisation, and their difference


def _unit_rows(bank_CMPD: np.ndarray) -> np.ndarray:
    x_CMF = bank_CMPD.reshape(bank_CMPD.shape[0], bank_CMPD.shape[1], -1).astype(np.float64)
    norm = np.linalg.norm(x_CMF, axis=2, keepdims=True)
    return np.divide(x_CMF, norm, out=np.zeros_like(x_CMF), where=norm > 0)


def cosine_matrices(bank_CMPD: np.ndarray) -> np.ndarray:
    """M x C x C: cosine similarity between the fills of every two combinations, per modality."""
    u_CMF = _unit_rows(bank_CMPD)
    return np.einsum("cmf,dmf->mcd", u_CMF, u_CMF)


def bank_pairs(
    bank_CMPD: np.ndarray,
    modalities: tuple[str, ...] | list[str],
    train_count_C: np.ndarray,
    init_CMPD: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per (modality m, combinations c1 < c2 both lacking m, both seen in training): modality, the two
    combinations (names and indices), shared (modalities both observe) and the cosine of their fills, trained and,
    when ``init_CMPD`` is given, at initialisation and of the update."""
    modalities = list(modalities)
    M = len(modalities)
    combos = combinations(M)
    mats = {"trained": cosine_matrices(bank_CMPD)}
    if init_CMPD is not None:
        mats["init"] = cosine_matrices(init_CMPD)
        mats["update"] = cosine_matrices(bank_CMPD - init_CMPD)
    masks = [sum(1 << i for i in c) for c in combos]
    rows = []
    for m in range(M):
        lacking = [c for c in range(len(combos)) if m not in combos[c] and train_count_C[c] > 0]
        for i, a in enumerate(lacking):
            for b in lacking[i + 1 :]:
                rows.append((m, a, b, bin(masks[a] & masks[b]).count("1")))
    arr = np.array(rows, dtype=np.int64).reshape(-1, 4)
    frame = pd.DataFrame(
        {
            "modality": [modalities[m] for m in arr[:, 0]],
            "combination_a": [combination_name(int(c), modalities) for c in arr[:, 1]],
            "combination_b": [combination_name(int(c), modalities) for c in arr[:, 2]],
            "index_a": arr[:, 1],
            "index_b": arr[:, 2],
            "shared": arr[:, 3],
        }
    )
    for name, mat in mats.items():
        frame[f"cosine_{name}"] = mat[arr[:, 0], arr[:, 1], arr[:, 2]]
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
    resampled pairs. None where undefined (fewer than 3 pairs, or no spread in either variable)."""
    shared_N = np.asarray(shared_N, dtype=float)
    cosine_N = np.asarray(cosine_N, dtype=float)
    n = len(shared_N)
    out: dict[str, float | int | None] = {"pairs": n}
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


def claim_frames(pairs: pd.DataFrame, resamples: int = 1000, seed: int = 0) -> dict[str, pd.DataFrame]:
    """``bank_claim``: per fill (trained, init, update) the correlations with their intervals; ``bank_by_shared``:
    per fill and shared count, the number of pairs and the mean and std of the cosine."""
    claim, by_shared = [], []
    for fill in FILLS:
        col = f"cosine_{fill}"
        if col not in pairs:
            continue
        claim.append({"fill": fill, **correlation_ci(pairs["shared"], pairs[col], resamples, seed)})
        g = pairs.groupby("shared")[col]
        by_shared.append(
            pd.DataFrame(
                {"fill": fill, "shared": g.mean().index, "pairs": g.size().values, "mean": g.mean().values}
            ).assign(std=g.std(ddof=0).values)
        )
    claim_cols = ["fill", "pairs", "spearman", "spearman_lo", "spearman_hi", "pearson", "pearson_lo", "pearson_hi"]
    return {
        "bank_claim": pd.DataFrame(claim, columns=claim_cols),
        "bank_by_shared": (
            pd.concat(by_shared, ignore_index=True)
            if by_shared
            else pd.DataFrame(columns=["fill", "shared", "pairs", "mean", "std"])
        ),
    }


def bank_rows(
    bank_CMPD: np.ndarray,
    modalities: tuple[str, ...] | list[str],
    train_count_C: np.ndarray,
    init_CMPD: np.ndarray | None = None,
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
                "train_samples": int(train_count_C[c]),
                "norm": float(np.linalg.norm(bank_CMPD[c, m])),
            }
            if init_CMPD is not None:
                v, v0 = bank_CMPD[c, m].ravel().astype(np.float64), init_CMPD[c, m].ravel().astype(np.float64)
                row["cosine_to_init"] = float(v @ v0 / max(np.linalg.norm(v) * np.linalg.norm(v0), 1e-30))
                row["relative_update"] = float(np.linalg.norm(v - v0) / max(np.linalg.norm(v0), 1e-30))
            rows.append(row)
    return pd.DataFrame(rows)


def never_read_unchanged(bank_CMPD: np.ndarray, init_CMPD: np.ndarray, num_modalities: int) -> bool:
    """Whether the entries training can never read (bank[c, m] with m observed in c) equal ``init_CMPD``: they get
    no gradient, so this confirms the rebuilt initialisation is the run's (false e.g. under weight decay)."""
    for c, combo in enumerate(combinations(num_modalities)):
        for m in combo:
            if not np.array_equal(bank_CMPD[c, m], init_CMPD[c, m]):
                return False
    return True
