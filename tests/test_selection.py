"""Model selection (multimoe/selection.py): the best epoch and early stopping on value sequences worked by hand."""

import math

import pytest

from multimoe.runs.resume import Progress
from multimoe.selection import better, record_epoch, validation_value


def run(values, select="accuracy", patience=0) -> tuple[Progress, list[bool]]:
    progress, flags = Progress(), []
    for epoch, value in enumerate(values, start=1):
        if progress.stopped:
            break
        flags.append(record_epoch(progress, epoch, value, select, patience))
    return progress, flags


@pytest.mark.parametrize(
    "select, values, best, flags",
    [
        ("accuracy", [0.5, 0.7, 0.6, 0.7], 2, [True, True, False, False]),  # a tie keeps the earlier epoch
        ("auc", [None, 0.6, math.nan, 0.55], 2, [False, True, False, False]),  # undefined values never improve
        ("loss", [1.0, 0.6, 0.9, 0.6], 2, [True, True, False, False]),  # lower is better
        ("loss", [1.0, 0.8, 0.9, 0.7], 4, [True, True, False, True]),
    ],
)
def test_best_epoch(select, values, best, flags):
    progress, seen = run(values, select)
    assert seen == flags
    assert progress.best_epoch == best and progress.best_value == values[best - 1]
    assert progress.epoch == len(values) and not progress.stopped


def test_no_defined_value_leaves_no_best_epoch():
    progress, flags = run([None, None], "auc")
    assert flags == [False, False] and progress.best_epoch == 0 and progress.best_value is None


def test_patience_counts_epochs_without_improvement():
    progress, flags = run([0.5, 0.7, 0.6, 0.65, 0.9], patience=2)
    assert flags == [True, True, False, False]  # stopped after epoch 4: epochs 3 and 4 brought nothing
    assert progress.stopped and progress.epoch == 4 and progress.stale == 2 and progress.best_epoch == 2
    progress, _ = run([0.5, 0.7, 0.6, 0.8, 0.7], patience=2)  # an improvement resets the count
    assert not progress.stopped and progress.stale == 1 and progress.best_epoch == 4
    progress, _ = run([0.5, 0.4, 0.3, 0.2], patience=0)  # 0: never stop
    assert not progress.stopped and progress.stale == 3


def test_better_and_the_value_read():
    assert better("accuracy", 0.6, 0.5) and not better("accuracy", 0.5, 0.5) and not better("accuracy", 0.4, 0.5)
    assert better("loss", 0.4, 0.5) and not better("loss", 0.5, 0.5) and not better("loss", 0.6, 0.5)
    assert better("f1", 0.0, None) and not better("f1", None, 0.1) and not better("f1", math.nan, None)
    result = {"loss": 0.3, "overall": {"accuracy": 0.9, "f1": 0.8, "auc": None}}
    assert validation_value(result, "loss") == 0.3 and validation_value(result, "f1") == 0.8
    assert validation_value(result, "auc") is None
