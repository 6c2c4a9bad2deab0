"""A run folder and every file in it, named in one place.

config.yaml        the resolved config (train.resume cleared: the folder describes the run)
metrics.jsonl      one line per completed epoch (epochs count from 1)
routing.jsonl      validation routing of every epoch (routing drift)
best.safetensors   weights of the best validation epoch (checkpoint.py); for a scikit-learn baseline, the fitted
                   model's arrays (baselines.py)
preprocess.json    the preprocessing fit on the training split: columns, scaling, categories, classes (predict)
state.safetensors  training state after the last completed epoch, while the run is unfinished (resume.py)
summary.json       validation and test results, cost, notes: written last, so its presence means finished
eval-<protocol>.json, report/   written later by `multimoe eval` and `multimoe report`
model.onnx         written later by `multimoe export` (the default output)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from multimoe.config import Config, ConfigError, read_config, to_dict
from multimoe.files import append_jsonl, atomic_write_text, read_jsonl

# Keys that decide where and how a run computes and reports, never what it computes: a resumed run may change
# them, `multimoe eval` may set the evaluation ones, and the benchmark's cell digest ignores them.
RESULT_NEUTRAL = (
    "out_dir",
    "name",
    "train.resume",
    "train.progress",
    "train.device",
    "train.threads",
    "train.compile",
    "train.eval_batch_size",
    "train.workers",
    "train.dist_timeout",
)


def without_neutral(config: dict, also: tuple[str, ...] = ()) -> dict:
    """A copy of a config dict without the result-neutral keys (and ``also``)."""
    out = json.loads(json.dumps(config))
    for key in (*RESULT_NEUTRAL, *also):
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.get(p, {})
        node.pop(last, None)
    return out


@dataclass(frozen=True)
class RunFolder:
    path: Path

    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    ROUTING = "routing.jsonl"
    BEST = "best.safetensors"
    STATE = "state.safetensors"
    SUMMARY = "summary.json"
    PREPROCESS = "preprocess.json"
    ONNX = "model.onnx"

    @classmethod
    def create(cls, cfg: Config, dataset: str) -> RunFolder:
        """A new folder ``<out_dir>/<name>-<timestamp>`` (name: method-dataset-protocol-seed by default)."""
        base = cfg.name or f"{cfg.method}-{dataset}-{cfg.data.missing.replace(':', '')}-s{cfg.seed}"
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        root = Path(cfg.out_dir)
        root.mkdir(parents=True, exist_ok=True)
        for i in range(1000):
            path = root / (f"{base}-{stamp}" + (f"-{i}" if i else ""))
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                continue
        raise RuntimeError(f"could not create a run folder under {root}")

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """An existing run folder (one written by ``multimoe train``), or a ConfigError saying it is not one."""
        folder = cls(Path(path))
        if not folder.config.is_file():
            raise ConfigError(
                f"{path} is not a run folder (no {cls.CONFIG}); pass a folder written by `multimoe train`"
            )
        return folder

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def routing(self) -> Path:
        return self.path / self.ROUTING

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    @property
    def state(self) -> Path:
        return self.path / self.STATE

    @property
    def summary(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def preprocess(self) -> Path:
        return self.path / self.PREPROCESS

    @property
    def onnx(self) -> Path:
        return self.path / self.ONNX

    def eval_file(self, missing: str) -> Path:
        return self.path / f"eval-{missing.replace(':', '')}.json"

    def report_dir(self, missing: str, trained_missing: str) -> Path:
        return self.path / ("report" if missing == trained_missing else f"report-{missing.replace(':', '')}")

    def read_config(self) -> Config:
        return read_config(self.config)

    def write_config(self, cfg: Config) -> dict:
        """Write the resolved config (``train.resume`` cleared); returns it as a dict."""
        config = to_dict(cfg)
        config["train"]["resume"] = None
        atomic_write_text(self.config, yaml.safe_dump(config, sort_keys=False))
        return config

    def write_preprocess(self, preprocessing: dict) -> None:
        atomic_write_text(self.preprocess, json.dumps(preprocessing, indent=1))

    def read_preprocess(self) -> dict | None:
        """The run's fitted preprocessing; None for runs written before it was kept (or trained on given splits)."""
        return json.loads(self.preprocess.read_text()) if self.preprocess.is_file() else None

    def read_summary(self) -> dict | None:
        """The summary of a finished run (None while unfinished; a hand-damaged file counts as unfinished)."""
        try:
            return json.loads(self.summary.read_text()) if self.summary.is_file() else None
        except json.JSONDecodeError:
            return None

    def write_summary(self, summary: dict) -> None:
        """Write the summary (atomically) and drop the training state, no longer needed (3x the model's size)."""
        atomic_write_text(self.summary, json.dumps(summary, indent=1))
        self.state.unlink(missing_ok=True)

    def log_epoch(self, record: dict, routing: list | None) -> None:
        """Append one epoch's metrics line and, when the model routes, its validation routing line."""
        append_jsonl(self.metrics, record)
        if routing:
            append_jsonl(self.routing, {"epoch": record["epoch"], "split": "val", "layers": routing})

    def read_log(self, which: str) -> list[dict]:
        """The records of ``metrics`` or ``routing``."""
        return read_jsonl(getattr(self, which))
