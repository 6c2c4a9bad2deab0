"""Model selection: which epoch's weights a run keeps, and when it stops early.

The best epoch is the first with the best validation value of ``train.select`` (highest accuracy, F1 or AUC, lowest
loss; a tie does not replace it; an undefined value, e.g. AUC on a split with one class, never improves). Early
stopping fires after ``train.patience`` epochs in a row without improvement (0: never). Epochs count from 1.
"""

from __future__ import annotations

import math

from multimoe.runs.resume import Progress


def validation_value(result: dict, select: str) -> float | None:
    """The value of ``select`` in an ``evaluate`` result (``loss`` is the mean cross-entropy)."""
    return result["loss"] if select == "loss" else result["overall"][select]


def better(select: str, new: float | None, best: float | None) -> bool:
    """Whether ``new`` improves on ``best`` (lower loss, higher anything else)."""
    if new is None or (isinstance(new, float) and math.isnan(new)):
        return False
    if best is None:
        return True
    return new < best if select == "loss" else new > best


def record_epoch(progress: Progress, epoch: int, value: float | None, select: str, patience: int) -> bool:
    """Enter epoch ``epoch``'s validation value into ``progress``; returns whether it is the new best."""
    improved = better(select, value, progress.best_value)
    if improved:
        progress.best_value, progress.best_epoch, progress.stale = value, epoch, 0
    else:
        progress.stale += 1
    progress.epoch, progress.stopped = epoch, bool(patience and progress.stale >= patience)
    return improved
