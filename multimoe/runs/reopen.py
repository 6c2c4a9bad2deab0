"""Reading a run folder back: its resolved config, its best model, and evaluation under another protocol."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from multimoe.baselines import SklearnBaseline
from multimoe.blend import build_trained
from multimoe.config import Config, ConfigError, parse_missing, parse_overrides, to_dict
from multimoe.data.dataset import DataSchema, Splits
from multimoe.data.prepare import prepare
from multimoe.data.table import Table, build_table
from multimoe.device import check_device, set_threads
from multimoe.errors import CheckpointError
from multimoe.evaluate import evaluate
from multimoe.files import atomic_write_text
from multimoe.model import compile_model
from multimoe.registry import ARCHS, is_baseline
from multimoe.runs.checkpoint import load_checkpoint, read_meta
from multimoe.runs.folder import RESULT_NEUTRAL, RunFolder

# what `multimoe eval` may set: the protocol of validation and test, and how (not what) the run computes
EVAL_OVERRIDES = ("data.missing", *(k for k in RESULT_NEUTRAL if k.startswith("train.") and k != "train.resume"))


def load_model(folder: RunFolder) -> tuple[Config, torch.nn.Module | SklearnBaseline]:
    """The run's resolved config and its best model (weights, or a baseline's fitted arrays, loaded without
    executing code)."""
    cfg = folder.read_config()
    if is_baseline(cfg.model.arch) and not folder.best.is_file():
        raise ConfigError(
            f"{folder.path} is a scikit-learn baseline run ({cfg.model.arch}) written before baselines kept their "
            "fitted arrays: it has its results (summary.json) but no model file; retrain it to use the model"
        )
    meta = read_meta(folder.best)
    schema = DataSchema.from_dict(meta["schema"])
    if is_baseline(cfg.model.arch):
        model = ARCHS.build(cfg.model.arch, cfg.model, cfg.seed)
        state, _ = load_checkpoint(folder.best, expect_model_config=to_dict(cfg.model))
        model.load_state_dict(state)
        model.schema = schema
        return cfg, model
    model = build_trained(cfg.model, schema)
    load_checkpoint(folder.best, model, expect_model_config=to_dict(cfg.model))
    return cfg, model


@dataclass
class OpenRun:
    """A run's best model with its data rebuilt: the same seeded splits, the test split under ``missing``."""

    folder: RunFolder
    cfg: Config
    model: torch.nn.Module  # on ``device``
    splits: Splits
    missing: str  # the protocol of the validation and test splits
    batch_size: int
    device: torch.device

    @property
    def run_dir(self) -> Path:
        return self.folder.path


def _check_overrides(over: dict) -> None:
    for section, keys in over.items():
        for key in keys if isinstance(keys, dict) else [""]:
            if f"{section}.{key}" not in EVAL_OVERRIDES:
                raise ConfigError(f"eval cannot override {section}.{key}; valid overrides: {', '.join(EVAL_OVERRIDES)}")


def open_run(run_dir: str | Path, overrides: list[str] | None = None, table: Table | None = None) -> OpenRun:
    """Load a run and rebuild its splits, optionally with another missingness protocol (``data.missing=...``) on
    the same test split; the preprocessing stays fit on the training split under the training protocol. Only the
    keys in ``EVAL_OVERRIDES`` may be overridden. A run trained on an in-memory table (``Table.from_frame``) needs
    that table again as ``table``."""
    folder = RunFolder.open(run_dir)
    over = parse_overrides(overrides or [])
    _check_overrides(over)
    cfg, model = load_model(folder)
    eval_missing = over.get("data", {}).get("missing", cfg.data.missing)
    parse_missing(eval_missing)
    t = over.get("train", {})
    device = check_device(str(t.get("device", cfg.train.device)))
    set_threads(int(t.get("threads", 0)))
    if table is None and read_meta(folder.best).get("in_memory_table"):
        raise ConfigError(
            f"run {folder.path} was trained on an in-memory table (Table.from_frame), which is not on disk: evaluate "
            "it from Python with the same table, e.g. multimoe.evaluate_run(run_dir, table=Table.from_frame(df, "
            "...)), or train from a table file (data.spec=FILE.yaml) to use the command line"
        )
    table = table if table is not None else build_table(cfg.data)
    splits = prepare(table, cfg.data, cfg.seed, eval_missing=eval_missing)
    splits.set_workers(int(t.get("workers", cfg.train.workers)))
    if splits.schema != model.schema:
        raise CheckpointError(f"the data no longer match run {folder.path}: {splits.schema} vs {model.schema}")
    if isinstance(model, torch.nn.Module):
        model.to(device)
    if isinstance(model, torch.nn.Module) and t.get("compile", cfg.train.compile):
        compile_model(model)
    batch_size = int(t.get("eval_batch_size", cfg.train.eval_batch_size))
    return OpenRun(folder, cfg, model, splits, eval_missing, batch_size, device)


def evaluate_run(run_dir: str | Path, overrides: list[str] | None = None, table: Table | None = None) -> dict:
    """Test metrics of a run's best model, optionally under another missingness protocol (``data.missing=...``)
    on the same test split; the preprocessing stays fit on the training split under the training protocol.
    Also written to ``eval-<protocol>.json`` in the run folder."""
    run = open_run(run_dir, overrides, table)
    test = evaluate(run.model, run.splits.test, run.batch_size, run.device)
    result = {"run_dir": str(run.run_dir), "missing": run.missing, "train_missing": run.cfg.data.missing, "test": test}
    atomic_write_text(run.folder.eval_file(run.missing), json.dumps(result, indent=1))
    return result
