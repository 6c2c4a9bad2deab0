"""Reading a run folder back: its resolved config, its best model, and evaluation under another protocol."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from multimoe.checkpoint import CheckpointError, atomic_write, load_checkpoint, read_meta
from multimoe.config import Config, ConfigError, load_config, parse_overrides
from multimoe.data import DataSchema, build_table, parse_protocol, prepare
from multimoe.evaluate import evaluate
from multimoe.model import MultimodalMoE, build_model

EVAL_KEYS = {"data": {"missing"}, "train": {"eval_batch_size", "device", "threads", "compile"}}


def load_run(run_dir: str | Path) -> tuple[Config, MultimodalMoE]:
    """The run's resolved config and its best model (weights loaded without executing code)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml); pass a folder written by `multimoe train`")
    cfg = load_config(run_dir / "config.yaml")
    ckpt = run_dir / "best.safetensors"
    meta = read_meta(ckpt)
    model = build_model(cfg.model, DataSchema.from_dict(meta["schema"]))
    load_checkpoint(ckpt, model)
    return cfg, model


def evaluate_run(run_dir: str | Path, overrides: list[str] | None = None) -> dict:
    """Test metrics of a run's best model, optionally under another missingness protocol (``data.missing=...``)
    on the same test split; the preprocessing stays fit on the training split under the training protocol."""
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
    device = t.get("device", cfg.train.device)
    if t.get("threads"):
        torch.set_num_threads(int(t["threads"]))
    splits = prepare(build_table(cfg.data), cfg.data, cfg.seed, eval_missing=eval_missing)
    if splits.schema != model.schema:
        raise CheckpointError(f"the data no longer matches run {run_dir}: {splits.schema} vs {model.schema}")
    model.to(device)
    if t.get("compile", cfg.train.compile):
        model.compile()
    test = evaluate(model, splits.test, int(t.get("eval_batch_size", cfg.train.eval_batch_size)), device)
    result = {"run_dir": str(run_dir), "missing": eval_missing, "train_missing": cfg.data.missing, "test": test}
    out = run_dir / f"eval-{eval_missing.replace(':', '')}.json"
    atomic_write(out, lambda p: Path(p).write_text(json.dumps(result, indent=1)))
    return result
