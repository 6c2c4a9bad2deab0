"""The batch model and the one place where modality combinations are indexed.

Shape letters: the legend in ``multimoe/__init__.py`` (B batch, M modalities, F features, S combinations).

A missing modality keeps a zero tensor of its normal shape and ``present_BM = False``, so batches have static
shapes and mix any combinations. Missing cells inside an observed modality are 0 with ``cell_missing = True``.
A modality's input is a tensor of any rank with the batch first (table B x F, image B x V x Y x X, text ids B x W)
or a named tuple of them (a series: values and times); its mask is one tensor (``multimoe.data.kinds``).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch
from torch import Tensor


def num_combinations(num_modalities: int) -> int:
    """Non-empty subsets of M modalities: 2^M - 1."""
    return (1 << num_modalities) - 1


@functools.cache
def combinations(num_modalities: int) -> tuple[tuple[int, ...], ...]:
    """All non-empty modality subsets in the published Flex-MoE order.

    The full set first, then by size descending; within a size, ``itertools.combinations`` order over the
    modality order. For 4 modalities: 0 = full, 1-4 the triples, 5-10 the pairs, 11-14 the singles.
    """
    if num_modalities < 1:
        raise ValueError(f"need at least one modality, got {num_modalities}")
    out: list[tuple[int, ...]] = []
    for size in range(num_modalities, 0, -1):
        out.extend(itertools.combinations(range(num_modalities), size))
    return tuple(out)


@functools.cache
def _bitmask_to_index(num_modalities: int) -> Tensor:
    lut = torch.full((num_combinations(num_modalities) + 1,), -1, dtype=torch.long)
    for idx, combo in enumerate(combinations(num_modalities)):
        lut[sum(1 << m for m in combo)] = idx
    return lut


def combination_table(num_modalities: int) -> Tensor:
    """Combination index of every presence bitmask (bit m: modality m; -1 for the empty set), a fresh tensor: what
    ``combination_index`` looks up, for graphs that must hold it themselves (``torch.export`` would otherwise cache a
    traced tensor in place of the real one)."""
    return _bitmask_to_index(num_modalities).clone()


def combination_index(present_BM: Tensor) -> Tensor:
    """Combination index per sample (published order); raises on a sample with no present modality."""
    present_BM = present_BM.bool()
    num_modalities = present_BM.shape[1]
    empty = ~present_BM.any(dim=1)
    if empty.any():
        rows = torch.nonzero(empty).flatten()[:5].tolist()
        raise ValueError(f"sample(s) at batch row(s) {rows} have no present modality; every sample needs at least one")
    weights = (1 << torch.arange(num_modalities, device=present_BM.device)).long()
    bits = (present_BM.long() * weights).sum(dim=1)
    return _bitmask_to_index(num_modalities).to(present_BM.device)[bits]


def combination_name(combo: tuple[int, ...] | int, modalities: list[str], sep: str = "+") -> str:
    """``(0, 2)`` or its index -> ``"fou+kar"`` using modality names."""
    if isinstance(combo, int):
        combo = combinations(len(modalities))[combo]
    return sep.join(modalities[m] for m in combo)


def keep_one(kept_BM: Tensor, present_BM: Tensor, keys_BM: Tensor) -> Tensor:
    """The rule of every drop (modality dropout, the MCAR protocol): a sample left with nothing keeps the one of its
    ``present`` modalities with the largest key (keys uniform in [0, 1): a modality chosen uniformly at random)."""
    empty_B = ~kept_BM.any(dim=1)
    choice_B = keys_BM.masked_fill(~present_BM, -1.0).argmax(dim=1)
    return kept_BM | (empty_B[:, None] & (torch.arange(kept_BM.shape[1], device=kept_BM.device) == choice_B[:, None]))


def drop_modalities(present_BM: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """Modality dropout: hide each present modality with probability ``rate``, never all of a sample's."""
    drop_BM = torch.rand(present_BM.shape, generator=generator, device=present_BM.device) < rate
    kept_BM = present_BM & ~drop_BM
    if not kept_BM.any(dim=1).all():  # draw the keys only when needed (the draws of the published runs)
        keys_BM = torch.rand(present_BM.shape, generator=generator, device=present_BM.device)
        kept_BM = keep_one(kept_BM, present_BM, keys_BM)
    return kept_BM


@dataclass
class Batch:
    """A batch of samples with static shapes.

    inputs: modality -> B x F float tensor (zeros where the modality or a cell is missing), or a tensor of another
        rank or a named tuple of tensors for the other kinds (``multimoe.data.kinds``)
    cell_missing: modality -> bool tensor, B x F for tables (True where a cell, step or pixel of an observed modality
        is missing; False everywhere in an absent modality)
    present_BM: which modalities each sample has
    labels_B: class indices
    combo_B: combination index per sample (published order)
    """

    inputs: dict[str, Tensor]
    cell_missing: dict[str, Tensor]
    present_BM: Tensor
    labels_B: Tensor
    combo_B: Tensor

    def __len__(self) -> int:
        return self.labels_B.shape[0]

    def with_presence(self, present_BM: Tensor) -> Batch:
        """The same samples with fewer modalities present (absent inputs zeroed, combinations recomputed)."""
        inputs, missing = {}, {}
        for i, m in enumerate(self.inputs):
            inputs[m] = _map(self.inputs[m], lambda x, i=i: x * _rows(present_BM[:, i], x))
            missing[m] = self.cell_missing[m] & _rows(present_BM[:, i], self.cell_missing[m])
        return Batch(inputs, missing, present_BM, self.labels_B, combination_index(present_BM))

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            inputs={k: _map(v, lambda x: x.to(device, non_blocking=True)) for k, v in self.inputs.items()},
            cell_missing={k: v.to(device, non_blocking=True) for k, v in self.cell_missing.items()},
            present_BM=self.present_BM.to(device, non_blocking=True),
            labels_B=self.labels_B.to(device, non_blocking=True),
            combo_B=self.combo_B.to(device, non_blocking=True),
        )


def _map(x, fn):
    """``fn`` applied to a tensor, or to every tensor of a named tuple (a series input)."""
    if isinstance(x, tuple):
        return type(x)(*(fn(t) for t in x)) if hasattr(x, "_fields") else tuple(fn(t) for t in x)
    return fn(x)


def _rows(flag_B: Tensor, like: Tensor) -> Tensor:
    """A per-row flag shaped to broadcast over ``like`` (B x 1 x ... x 1)."""
    return flag_B.view(-1, *[1] * (like.dim() - 1))
