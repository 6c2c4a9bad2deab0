"""The training split kept inside a model, for methods that draw training samples while they run: Conf-SMoE's
pre-imputation (a missing modality from the mean of random training samples that have it) and MoE-Retriever's
supporting groups (training samples that observe the missing modality and everything the sample observes).

Shape letters: the legend in ``multimoe/__init__.py`` (N rows of the pool: the training split, M modalities, F
features, B batch; C here counts the cells drawn for, S the rows drawn per cell).

The pool holds the training split's preprocessed inputs as buffers, so it travels with the weights in every
checkpoint (``multimoe eval``, ``report``, ``predict`` and the estimator find it there) and holds no validation or
test row: ``train`` fills it from the training split (``fill_pools``) after the run's config was resolved to the
split's size (``resolve_pool_rows``). A model built from a resolved config has a pool of the right shape, so its
checkpoint loads like any other. Draws use the global generator in training (seeded by the run, restored on resume)
and a fixed-seed generator per call in evaluation, so that evaluating the same batches twice gives the same numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from multimoe.config import ModelConfig
from multimoe.data.dataset import DataSchema, MultimodalData
from multimoe.registry import ARCHS

EVAL_SEED = 0  # the generator of draws in evaluation, reseeded at every call


def keeps_training_rows(arch: str) -> bool:
    """Whether the architecture keeps a pool of training rows (its class says so)."""
    entry = ARCHS.check(arch)
    return entry.kind == "neural" and bool(getattr(entry.load(), "keeps_training_rows", False))


def resolve_pool_rows(cfg: ModelConfig, train: MultimodalData) -> ModelConfig:
    """``cfg`` with ``pool_rows`` set to the training split's size when the architecture keeps a pool (else 0)."""
    rows = len(train) if keeps_training_rows(cfg.arch) else 0
    return cfg if cfg.pool_rows == rows else dataclasses.replace(cfg, pool_rows=rows)


def fill_pools(model: nn.Module, train: MultimodalData) -> None:
    """Copy the training split into every pool of ``model``."""
    for module in model.modules():
        if isinstance(module, TrainingPool):
            module.fill(train)


def eval_generator(training: bool, device: torch.device) -> torch.Generator | None:
    """The generator of a forward pass's draws: the global one in training, a freshly seeded one in evaluation."""
    return None if training else torch.Generator(device=device).manual_seed(EVAL_SEED)


class TrainingPool(nn.Module):
    """The training split's inputs (zero where a modality is absent, as in batches), cell masks and presence."""

    def __init__(self, schema: DataSchema, rows: int) -> None:
        super().__init__()
        self.modalities = schema.modalities
        for i, f in enumerate(schema.features):  # buffers by position: modality names may hold dots
            self.register_buffer(f"values{i}_NF", torch.zeros(rows, f))
            self.register_buffer(f"missing{i}_NF", torch.zeros(rows, f, dtype=torch.bool))
        self.register_buffer("present_NM", torch.zeros(rows, schema.num_modalities, dtype=torch.bool))

    @property
    def rows(self) -> int:
        return self.present_NM.shape[0]

    def inputs(self, m: int, rows_R: Tensor) -> tuple[Tensor, Tensor]:
        """Values and cell masks of modality ``m`` at pool rows ``rows_R``."""
        return getattr(self, f"values{m}_NF")[rows_R], getattr(self, f"missing{m}_NF")[rows_R]

    @torch.no_grad()
    def fill(self, data: MultimodalData) -> None:
        if len(data) != self.rows:
            raise ValueError(
                f"the pool holds {self.rows} rows (model.pool_rows) but the training split has {len(data)}"
            )
        present_NM = data.present_NM.to(self.present_NM.device)
        self.present_NM.copy_(present_NM)
        for i, m in enumerate(self.modalities):
            keep_N1 = present_NM[:, i : i + 1]
            getattr(self, f"values{i}_NF").copy_(data.values[m].to(keep_N1.device) * keep_N1)
            getattr(self, f"missing{i}_NF").copy_(data.cell_missing[m].to(keep_N1.device) & keep_N1)

    def draw_having(self, m: int, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        """Pool rows that observe modality ``m``, drawn uniformly with replacement (Conf-SMoE's pre-imputation:
        its code's ``torch.randint`` over the training samples that have the modality)."""
        having = torch.nonzero(self.present_NM[:, m]).flatten()
        if having.numel() == 0:
            raise ValueError(f"no training sample observes modality {self.modalities[m]!r}: nothing to draw from")
        pick = torch.randint(having.numel(), shape, generator=generator, device=having.device)
        return having[pick]


@dataclass
class SupportDraw:
    """Support rows drawn for C cells: row c uses the first ``count_C[c]`` pool rows of ``rows_CS``; ``short_C``:
    fewer than ``count_C[c]`` pool rows observe the target and the whole observed set (the code then crashes);
    ``supported_C``: some pool row observes the target (else the cell cannot be retrieved)."""

    rows_CS: Tensor
    count_C: Tensor
    short_C: Tensor
    supported_C: Tensor


def draw_support(
    present_NM: Tensor,
    target_C: Tensor,
    observed_CM: Tensor,
    count_C: Tensor,
    short: str,
    generator: torch.Generator | None,
) -> SupportDraw:
    """MoE-Retriever's supporting groups: for cell c (a sample missing modality ``target_C[c]`` that observes
    ``observed_CM[c]``), ``count_C[c]`` pool rows that observe the target and every observed modality, drawn
    without replacement (its code: ``random.sample``).

    When fewer rows qualify, ``short`` decides: ``replace`` draws the qualifying rows with replacement, ``relax``
    takes the rows that observe the target and most of the observed set (random among equals); with no qualifying
    row both relax, and with fewer rows observing the target than needed those are drawn again. Rows are ranked
    once: a row observing the target scores the number of the cell's observed modalities it has plus a uniform key
    in [0, 1) (a random order among equal scores), so the top rows are the qualifying ones in random order, then the
    best partial matches."""
    if short not in ("replace", "relax"):
        raise ValueError(f"unknown short_support {short!r}; choose replace or relax")
    device = present_NM.device
    C, N = target_C.shape[0], present_NM.shape[0]
    S = int(count_C.max()) if C else 0
    has_target_CN = present_NM.t()[target_C]
    overlap_CN = (present_NM[None, :, :] & observed_CM[:, None, :]).sum(dim=2)
    keys_CN = torch.rand(has_target_CN.shape, generator=generator, device=device)
    score_CN = torch.where(has_target_CN, overlap_CN.to(keys_CN.dtype) + keys_CN, float("-inf"))
    top_CS = score_CN.topk(min(S, N), dim=1).indices
    available_C = has_target_CN.sum(dim=1)
    qualifying_C = (has_target_CN & (overlap_CN == observed_CM.sum(dim=1, keepdim=True))).sum(dim=1)
    short_C = qualifying_C < count_C
    pos_CS = torch.arange(S, device=device).expand(C, S)
    if short == "replace":
        again_C = short_C & (qualifying_C > 0)
        drawn_CS = (torch.rand(C, S, generator=generator, device=device) * qualifying_C[:, None]).long()
        pos_CS = torch.where(again_C[:, None], drawn_CS, pos_CS)
    pos_CS = torch.where(pos_CS >= available_C[:, None], pos_CS % available_C.clamp(min=1)[:, None], pos_CS)
    rows_CS = top_CS.gather(1, pos_CS.clamp(max=max(min(S, N) - 1, 0))) if S else top_CS
    return SupportDraw(rows_CS, count_C, short_C, available_C > 0)
