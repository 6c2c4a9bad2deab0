"""Resuming a run killed at any moment (SIGKILL included) from its last completed epoch.

After every epoch ``train`` writes, in this order: the epoch's lines in ``metrics.jsonl`` and ``routing.jsonl``, the
training state ``state.safetensors`` (weights, optimizer, torch RNG, epoch and best-so-far bookkeeping; see
checkpoint.py), then ``best.safetensors`` when the epoch improved. Each checkpoint is replaced atomically, so a
kill leaves either the previous or the new version of each file. On resume the state is the source of truth:
metric lines after its epoch (and a half-written last line) are dropped, to be written again, and a best checkpoint
the kill left one epoch behind is rewritten from the state's weights. The epoch order is a pure function of
(epoch, seed) and the RNG state is restored, so on CPU a resumed run ends exactly where an uninterrupted one does.
The training state is deleted once the run's summary is written; a finished run reports its summary on resume.
Epochs count from 1; 0 means none.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields

import torch

from multimoe.config import Config, ConfigError, to_dict, with_added_defaults
from multimoe.data.dataset import DataSchema
from multimoe.errors import CheckpointError
from multimoe.files import write_jsonl
from multimoe.model import resolve
from multimoe.runs.checkpoint import (
    first_difference,
    load_training_state,
    read_meta,
    save_checkpoint,
    save_training_state,
)
from multimoe.runs.folder import RESULT_NEUTRAL, RunFolder, without_neutral
from multimoe.version import __version__


@dataclass
class Progress:
    """Where training stands after a completed epoch: everything the loop needs besides weights and RNG."""

    epoch: int = 0  # last completed epoch (0: none yet)
    best_value: float | None = None  # best validation value of train.select so far
    best_epoch: int = 0  # epoch of best.safetensors (0: none yet)
    stale: int = 0  # epochs since the last improvement (early stopping)
    stopped: bool = False  # early stopping fired
    seconds: float = 0.0  # wall time of this run so far, over all its sessions
    carry: float = 0.0  # router loss the next epoch's first step adds (train.carry_val_gate_loss; else 0)


def check_same_config(folder: RunFolder, config: dict) -> None:
    """A resumed run must compute what the original computed: only the result-neutral keys may differ."""
    diff = first_difference(without_neutral(to_dict(folder.read_config())), without_neutral(config))
    if diff:
        free = ", ".join(k for k in RESULT_NEUTRAL if k != "train.resume")
        raise ConfigError(
            f"cannot resume {folder.path} with another configuration ({diff}, run vs now); resume with the run's own "
            f"config (`multimoe train --resume {folder.path}`) or start a new run. Only {free} may change"
        )


def finished_summary(cfg: Config) -> dict | None:
    """The summary of the run ``cfg.train.resume`` names when it already finished (None when it has not); checks
    first that it is a run folder and, when finished, that ``cfg`` is the run's configuration."""
    folder = RunFolder.open(cfg.train.resume)
    summary = folder.read_summary()
    if summary is None:
        return None
    if folder.best.is_file():  # resolve as train did (scikit-learn baselines have no checkpoint, nothing to resolve)
        model_cfg, _ = resolve(cfg.model, DataSchema.from_dict(read_meta(folder.best)["schema"]))
        cfg = dataclasses.replace(cfg, model=model_cfg)
    check_same_config(folder, to_dict(cfg))
    return summary


def save_progress(
    folder: RunFolder, model: torch.nn.Module, optimizer: torch.optim.Optimizer, progress: Progress, meta: dict
) -> None:
    """The training state after ``progress.epoch`` (call after the epoch's metric lines, before best)."""
    save_training_state(folder.state, model, optimizer, {**meta, "progress": asdict(progress)})


def restore(folder: RunFolder, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict) -> Progress:
    """Bring ``model``, ``optimizer``, the RNG and the run folder back to the last completed epoch."""
    if not folder.state.is_file():  # killed before the first epoch completed: start over in the same folder
        progress = Progress()
    else:
        written = read_meta(folder.state).get("version")
        if written != __version__:
            raise CheckpointError(
                f"{folder.state} was written by multimoe {written}, this is {__version__}: resume it with that "
                "version, or start a new run"
            )
        state_meta = load_training_state(folder.state, model, optimizer)
        written = with_added_defaults(state_meta.get("config", {}))  # a state from before a key was added
        diff = first_difference(without_neutral(written), without_neutral(meta["config"]))
        if diff:
            raise CheckpointError(f"{folder.state} was written for another configuration ({diff}, state vs now)")
        if state_meta.get("schema") != meta["schema"]:
            raise CheckpointError(
                f"the data no longer match run {folder.path}: it was trained on {state_meta.get('schema')}, the data "
                f"now give {meta['schema']}"
            )
        names = {f.name for f in fields(Progress)}
        progress = Progress(**{k: v for k, v in state_meta["progress"].items() if k in names})
    for log in ("metrics", "routing"):  # lines of later epochs, and a line the kill cut short, are written again
        if getattr(folder, log).is_file():
            write_jsonl(getattr(folder, log), [r for r in folder.read_log(log) if r.get("epoch", 0) <= progress.epoch])
    _repair_best(folder, model, progress, meta)
    return progress


def _repair_best(folder: RunFolder, model: torch.nn.Module, progress: Progress, meta: dict) -> None:
    """best.safetensors is written after the state: a kill in between leaves it one improvement behind."""
    if progress.best_epoch == 0:
        return
    written = None
    if folder.best.is_file():
        try:
            written = read_meta(folder.best).get("epoch")
        except CheckpointError:
            written = None
    if written == progress.best_epoch:
        return
    if progress.best_epoch != progress.epoch:  # only the last epoch's best can be pending; older ones were written
        raise CheckpointError(
            f"{folder.best} should hold epoch {progress.best_epoch} but holds "
            f"{'nothing readable' if written is None else f'epoch {written}'}; the run cannot be resumed"
        )
    save_checkpoint(folder.best, model, {**meta, "epoch": progress.best_epoch, "value": progress.best_value})
