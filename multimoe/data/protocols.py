"""Missingness protocols, the same for every method (DATASETS.md); ``config.parse_missing`` reads their names.

- ``natural``: the dataset's own missingness only (a modality whose every cell is NaN is missing).
- ``mcar:R``: on top of the natural missingness, each (sample, modality) is dropped independently with probability
  R; a sample that would lose every modality keeps one of its naturally present modalities, chosen uniformly at
  random (``batch.keep_one``). The draw depends only on the seed and the table's shape, so every method sees the
  same masks.
- per combination (evaluation): every sample shows exactly one given combination, where its data allow it.
"""

from __future__ import annotations

import numpy as np
import torch

from multimoe.batch import keep_one
from multimoe.config import parse_missing


def apply_protocol(natural_NM: np.ndarray, spec: str, seed: int) -> np.ndarray:
    """Presence mask under ``spec``; never leaves a sample with nothing present (given ``natural_NM`` does not)."""
    kind, rate = parse_missing(spec)
    natural_NM = np.asarray(natural_NM, dtype=bool)
    if kind == "natural" or rate == 0.0:
        return natural_NM.copy()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x6D636172]))  # "mcar": independent of model RNG
    drop_NM = rng.random(natural_NM.shape) < rate
    keys_NM = rng.random(natural_NM.shape)  # drawn unconditionally so masks depend only on seed and shape
    kept_NM = keep_one(*(torch.from_numpy(a) for a in (natural_NM & ~drop_NM, natural_NM, keys_NM)))
    return kept_NM.numpy()


def combination_presence(natural_NM: np.ndarray, combo: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Presence with exactly ``combo`` observed, and which rows can show it (their natural set covers it)."""
    natural_NM = np.asarray(natural_NM, dtype=bool)
    want_M = np.zeros(natural_NM.shape[1], dtype=bool)
    want_M[list(combo)] = True
    rows_N = natural_NM[:, want_M].all(axis=1)
    return np.broadcast_to(want_M, natural_NM.shape).copy(), rows_N
