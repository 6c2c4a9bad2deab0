"""Resuming a run killed at any moment (SIGKILL included) from its last completed epoch.

After every epoch ``train`` writes, in this order: the epoch's lines in ``metrics.jsonl`` and ``routing.jsonl``, the
training state ``state.safetensors`` (weights, optimizer, torch RNG, epoch and best-so-far bookkeeping; see
checkpoint.py), then ``best.safetensors`` when the epoch improved. Each checkpoint is replaced atomically, so a
kill leaves either the previous or the new version of each file. On resume the state is the source of truth:
metric lines after its epoch (and a half-written last line) are dropped, to be written again, and a best checkpoint
the kill left one epoch behind is rewritten from the state's weights. The epoch order is a pure function of
(epoch, seed) and the RNG state is restored, so on CPU a resumed run ends exactly where an uninterrupted one does.
The training state is deleted once the run's summary is written; a finished run reports its summary on resume.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from multimoe.checkpoint import (
    CheckpointError,
    atomic_write,
    first_difference,
    load_training_state,
    read_meta,
    save_checkpoint,
    save_training_state,
)
from multimoe.config import Config, ConfigError, load_config, to_dict

STATE_FILE = "state.safetensors"
BEST_FILE = "best.safetensors"
SUMMARY_FILE = "summary.json"
EPOCH_LOGS = ("metrics.jsonl", "routing.jsonl")
# keys a resumed run may change: where it runs and how it reports, never what it computes
FREE_KEYS = ("out_dir", "name", "train.resume", "train.progress", "train.device", "train.threads", "train.compile")


@dataclass
class Progress:
    """Where training stands after a completed epoch: everything the loop needs besides weights and RNG."""

    epoch: int = -1  # last completed epoch, 0-based (-1: none yet)
    best_value: float | None = None  # best validation value of train.select so far
    best_epoch: int = -1  # epoch of best.safetensors (-1: none yet)
    stale: int = 0  # epochs since the last improvement (early stopping)
    stopped: bool = False  # early stopping fired
    seconds: float = 0.0  # wall time of this run so far, over all its sessions


def _comparable(config: dict) -> dict:
    out = json.loads(json.dumps(config))
    for key in FREE_KEYS:
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.get(p, {})
        node.pop(last, None)
    return out


def run_config(run_dir: Path) -> Config:
    """The resolved config a run folder was started with."""
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml); pass a folder written by `multimoe train`")
    return load_config(run_dir / "config.yaml")


def check_same_config(run_dir: Path, config: dict) -> None:
    """A resumed run must compute what the original computed: only FREE_KEYS may differ."""
    diff = first_difference(_comparable(to_dict(run_config(run_dir))), _comparable(config))
    if diff:
        raise ConfigError(
            f"cannot resume {run_dir} with another configuration ({diff}, run vs now); resume with the run's own "
            f"config (`multimoe train --resume {run_dir}`) or start a new run. Only "
            f"{', '.join(k for k in FREE_KEYS if k != 'train.resume')} may change"
        )


def finished_summary(cfg: Config) -> dict | None:
    """The summary of the run ``cfg.train.resume`` names when it already finished (None when it has not); checks
    first that it is a run folder and, when finished, that ``cfg`` is the run's configuration."""
    from multimoe.data import DataSchema
    from multimoe.model import resolve

    run_dir = Path(cfg.train.resume)
    run_config(run_dir)
    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # summary.json is written atomically: only a hand-edited file lands here; finish the run again
    model_cfg, _ = resolve(cfg.model, DataSchema.from_dict(read_meta(run_dir / BEST_FILE)["schema"]))
    check_same_config(run_dir, to_dict(dataclasses.replace(cfg, model=model_cfg)))
    return summary


def finish(run_dir: Path) -> None:
    """After the summary is written the training state is no longer needed (it holds 3x the model's size)."""
    (run_dir / STATE_FILE).unlink(missing_ok=True)


def save_progress(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, progress: Progress, meta: dict
) -> None:
    """The training state after ``progress.epoch`` (call after the epoch's metric lines, before best)."""
    save_training_state(run_dir / STATE_FILE, model, optimizer, {**meta, "progress": asdict(progress)})


def restore(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict) -> Progress:
    """Bring ``model``, ``optimizer``, the RNG and the run folder back to the last completed epoch."""
    path = run_dir / STATE_FILE
    if not path.is_file():  # killed before the first epoch completed: start over in the same folder
        progress = Progress()
    else:
        state_meta = load_training_state(path, model, optimizer)
        diff = first_difference(_comparable(state_meta.get("config", {})), _comparable(meta["config"]))
        if diff:
            raise CheckpointError(f"{path} was written for another configuration ({diff}, state vs now)")
        if state_meta.get("schema") != meta["schema"]:
            raise CheckpointError(
                f"the data no longer match run {run_dir}: it was trained on {state_meta.get('schema')}, the data "
                f"now give {meta['schema']}"
            )
        names = {f.name for f in fields(Progress)}
        progress = Progress(**{k: v for k, v in state_meta["progress"].items() if k in names})
    for name in EPOCH_LOGS:
        _truncate_epochs(run_dir / name, progress.epoch)
    _repair_best(run_dir, model, progress, meta)
    return progress


def _truncate_epochs(path: Path, last_epoch: int) -> None:
    """Keep the lines of epochs <= ``last_epoch``; drops later ones and a line the kill cut short."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("epoch", last_epoch + 1) <= last_epoch:
            keep.append(line + "\n")
    atomic_write(path, lambda p: Path(p).write_text("".join(keep)))


def _repair_best(run_dir: Path, model: torch.nn.Module, progress: Progress, meta: dict) -> None:
    """best.safetensors is written after the state: a kill in between leaves it one improvement behind."""
    if progress.best_epoch < 0:
        return
    path = run_dir / BEST_FILE
    written = None
    if path.is_file():
        try:
            written = read_meta(path).get("epoch")
        except CheckpointError:
            written = None
    if written == progress.best_epoch:
        return
    if progress.best_epoch != progress.epoch:  # only the last epoch's best can be pending; older ones were written
        raise CheckpointError(
            f"{path} should hold epoch {progress.best_epoch + 1} but holds "
            f"{'nothing readable' if written is None else f'epoch {written + 1}'}; the run cannot be resumed"
        )
    save_checkpoint(path, model, {**meta, "epoch": progress.best_epoch, "value": progress.best_value})
