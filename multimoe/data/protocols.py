"""Missingness protocols, the same for every method (DATASETS.md); ``config.parse_missing`` reads their names.

- ``natural``: the dataset's own missingness only (a modality whose every cell is NaN is missing).
- ``mcar:R``: on top of the natural missingness, each (sample, modality) is dropped independently with probability
  R; a sample that would lose every modality keeps one of its naturally present modalities, chosen uniformly at
  random (``batch.keep_one``). The draw depends only on the seed and the table's shape, so every method sees the
  same masks.
- ``cpm:R``: the incomplete multi-view protocol of CPM-Nets (NeurIPS 2019) and UIMC (CVPR 2023), where R is the
  fraction of missing (sample, modality) entries, Σ_m (samples missing m) / (M·N). Every sample keeps one of its
  naturally present modalities, chosen uniformly at random; then entries drawn uniformly at random among the other
  naturally present ones are switched on until round((1 - R)·M·N) entries are present (when (1 - R) ≤ 1/M every
  sample keeps exactly one). The published codes switch entries on in random rounds until the present fraction is
  within 0.005 of 1 - R; drawing the exact count meets that and needs no loop. Natural gaps are never filled: on a
  table whose naturally present entries fall short of 1 - R, every one of them stays present. Like ``mcar``, one
  mask is drawn over every row, so test samples miss modalities too. The literature's split (stratified 80/20
  train/test) is ``data.test_fraction=0.2`` with the validation set taken out of the 80 %, e.g.
  ``data.val_fraction=0.1`` (one eighth of it, stratified, from the seed).
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
    if kind == "cpm":
        return _cpm(natural_NM, rate, np.random.default_rng(np.random.SeedSequence([seed, 0x63706D])))  # "cpm"
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x6D636172]))  # "mcar": independent of model RNG
    drop_NM = rng.random(natural_NM.shape) < rate
    keys_NM = rng.random(natural_NM.shape)  # drawn unconditionally so masks depend only on seed and shape
    kept_NM = keep_one(*(torch.from_numpy(a) for a in (natural_NM & ~drop_NM, natural_NM, keys_NM)))
    return kept_NM.numpy()


def _cpm(natural_NM: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """The ``cpm:R`` mask (module docstring): one naturally present modality per sample, then a uniformly random set
    of further naturally present entries up to round((1 - R)·M·N) present in all."""
    N, M = natural_NM.shape
    first_N = np.where(natural_NM, rng.random((N, M)), -1.0).argmax(axis=1)  # uniform among the present ones
    present_NM = np.zeros_like(natural_NM)
    present_NM[np.arange(N), first_N] = True
    extra = max(round((1.0 - rate) * N * M) - N, 0)
    candidates = rng.permutation(np.flatnonzero(natural_NM & ~present_NM))
    present_NM.flat[candidates[:extra]] = True
    return present_NM


def combination_presence(natural_NM: np.ndarray, combo: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Presence with exactly ``combo`` observed, and which rows can show it (their natural set covers it)."""
    natural_NM = np.asarray(natural_NM, dtype=bool)
    want_M = np.zeros(natural_NM.shape[1], dtype=bool)
    want_M[list(combo)] = True
    rows_N = natural_NM[:, want_M].all(axis=1)
    return np.broadcast_to(want_M, natural_NM.shape).copy(), rows_N
