"""Missingness protocols, the same for every method (DATASETS.md).

- ``natural``: the dataset's own missingness only (a modality whose every cell is NaN is missing).
- ``mcar:R``: on top of the natural missingness, each (sample, modality) is dropped independently with probability
  R; a sample that would lose every modality keeps one of its naturally present modalities, chosen uniformly at
  random. The draw depends only on the seed and the table's shape, so every method sees the same masks.
- ``combination``: (evaluation) every sample shows exactly one given combination, where its data allow it.
"""

from __future__ import annotations

import numpy as np


def parse_protocol(spec: str) -> tuple[str, float]:
    """``"natural"`` -> ("natural", 0.0); ``"mcar:0.3"`` -> ("mcar", 0.3)."""
    from multimoe.config import ConfigError

    if spec == "natural":
        return "natural", 0.0
    kind, _, rate = spec.partition(":")
    if kind == "mcar" and rate:
        try:
            r = float(rate)
        except ValueError:
            r = -1.0
        if 0.0 <= r < 1.0:
            return "mcar", r
    raise ConfigError(f"data.missing={spec!r} is not valid; choose natural or mcar:R with R in [0, 1), e.g. mcar:0.3")


def apply_protocol(natural_NM: np.ndarray, spec: str, seed: int) -> np.ndarray:
    """Presence mask under ``spec``; never leaves a sample with nothing present (given ``natural_NM`` does not)."""
    kind, rate = parse_protocol(spec)
    natural_NM = np.asarray(natural_NM, dtype=bool)
    if kind == "natural" or rate == 0.0:
        return natural_NM.copy()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x6D636172]))  # "mcar": independent of model RNG
    drop_NM = rng.random(natural_NM.shape) < rate
    keep_key_NM = rng.random(natural_NM.shape)  # drawn unconditionally so masks depend only on seed and shape
    present_NM = natural_NM & ~drop_NM
    empty_N = ~present_NM.any(axis=1)
    if empty_N.any():
        keys = np.where(natural_NM, keep_key_NM, -1.0)
        rescue = keys.argmax(axis=1)
        rows = np.nonzero(empty_N)[0]
        present_NM[rows, rescue[rows]] = True
    return present_NM


def combination_presence(natural_NM: np.ndarray, combo: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Presence with exactly ``combo`` observed, and which rows can show it (their natural set covers it)."""
    natural_NM = np.asarray(natural_NM, dtype=bool)
    want_M = np.zeros(natural_NM.shape[1], dtype=bool)
    want_M[list(combo)] = True
    rows_N = natural_NM[:, want_M].all(axis=1)
    return np.broadcast_to(want_M, natural_NM.shape).copy(), rows_N
