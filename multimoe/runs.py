"""Reading a run folder back: its resolved config, its best model, and evaluation under another protocol."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from multimoe.checkpoint import CheckpointError, atomic_write, load_checkpoint, read_meta
from multimoe.config import Config, ConfigError, check_device, load_config, parse_overrides, to_dict
from multimoe.data import DataSchema, Splits, Table, build_table, parse_protocol, prepare
from multimoe.evaluate import evaluate
from multimoe.model import SKLEARN_ARCHS, MultimodalMoE, build_model

EVAL_KEYS = {"data": {"missing"}, "train": {"eval_batch_size", "device", "threads", "compile"}}


def load_run(run_dir: str | Path) -> tuple[Config, MultimodalMoE]:
    """The run's resolved config and its best model (weights loaded without executing code)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml); pass a folder written by `multimoe train`")
    cfg = load_config(run_dir / "config.yaml")
    if cfg.model.arch in SKLEARN_ARCHS:
        raise ConfigError(
            f"{run_dir} is a scikit-learn baseline run ({cfg.model.arch}): it keeps its results (summary.json) but no "
            "model file, since pickles cannot be loaded safely; retrain it to evaluate under another protocol"
        )
    ckpt = run_dir / "best.safetensors"
    meta = read_meta(ckpt)
    model = build_model(cfg.model, DataSchema.from_dict(meta["schema"]))
    load_checkpoint(ckpt, model, expect_model_config=to_dict(cfg.model))
    return cfg, model


@dataclass
class OpenRun:
    """A run's best model with its data rebuilt: the same seeded splits, the test split under ``missing``."""

    run_dir: Path
    cfg: Config
    model: MultimodalMoE  # on ``device``
    splits: Splits
    missing: str  # the protocol of the validation and test splits
    batch_size: int
    device: str


def open_run(run_dir: str | Path, overrides: list[str] | None = None, table: Table | None = None) -> OpenRun:
    """Load a run and rebuild its splits, optionally with another missingness protocol (``data.missing=...``) on
    the same test split; the preprocessing stays fit on the training split under the training protocol. Only the
    keys in ``EVAL_KEYS`` may be overridden. A run trained on an in-memory table (``Table.from_frame``) needs that
    table again as ``table``."""
    run_dir = Path(run_dir)
    over = parse_overrides(overrides or [])
    for section, keys in over.items():
        allowed = EVAL_KEYS.get(section, set())
        bad = [k for k in (keys if isinstance(keys, dict) else {None: 0}) if k not in allowed]
        if bad:
            valid = ", ".join(f"{s}.{k}" for s, ks in EVAL_KEYS.items() for k in sorted(ks))
            raise ConfigError(f"eval cannot override {section}.{bad[0] or ''}; valid overrides: {valid}")
    cfg, model = load_run(run_dir)
    eval_missing = over.get("data", {}).get("missing", cfg.data.missing)
    parse_protocol(eval_missing)
    t = over.get("train", {})
    device = check_device(str(t.get("device", cfg.train.device)))
    if t.get("threads"):
        torch.set_num_threads(int(t["threads"]))
    if table is None and read_meta(run_dir / "best.safetensors").get("in_memory_table"):
        raise ConfigError(
            f"run {run_dir} was trained on an in-memory table (Table.from_frame), which is not on disk: evaluate it "
            "from Python with the same table, e.g. multimoe.runs.evaluate_run(run_dir, table=Table.from_frame(df, "
            "...)), or train from a table file (data.spec=FILE.yaml) to use the command line"
        )
    table = table if table is not None else build_table(cfg.data)
    splits = prepare(table, cfg.data, cfg.seed, eval_missing=eval_missing)
    if splits.schema != model.schema:
        raise CheckpointError(f"the data no longer matches run {run_dir}: {splits.schema} vs {model.schema}")
    model.to(device)
    if t.get("compile", cfg.train.compile):
        model.compile()
    batch_size = int(t.get("eval_batch_size", cfg.train.eval_batch_size))
    return OpenRun(run_dir, cfg, model, splits, eval_missing, batch_size, device)


def evaluate_run(run_dir: str | Path, overrides: list[str] | None = None, table: Table | None = None) -> dict:
    """Test metrics of a run's best model, optionally under another missingness protocol (``data.missing=...``)
    on the same test split; the preprocessing stays fit on the training split under the training protocol."""
    run = open_run(run_dir, overrides, table)
    test = evaluate(run.model, run.splits.test, run.batch_size, run.device)
    result = {"run_dir": str(run.run_dir), "missing": run.missing, "train_missing": run.cfg.data.missing, "test": test}
    out = run.run_dir / f"eval-{run.missing.replace(':', '')}.json"
    atomic_write(out, lambda p: Path(p).write_text(json.dumps(result, indent=1)))
    return result
