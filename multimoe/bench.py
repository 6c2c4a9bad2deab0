"""The benchmark harness: every method on the same data, splits, masks, budget and seeds.

A sweep file names methods (a preset plus overrides each), a grid of config overrides (e.g. datasets and
missingness protocols), seeds, the overrides every cell shares (the training budget), and the reference method
for paired comparisons. ``run_sweep`` expands methods x grid x seeds into cells, runs them in worker processes
(one per core by default, one torch thread each), and appends one JSON line per finished cell to the store
``<results>/cells.jsonl``. A cell's key holds a digest of its fully resolved config, so sweeps sharing a store
never compute the same cell twice. A restart skips finished cells; a line cut short by a kill is dropped and
repaired. Tables and plots of a sweep go to ``<results>/<sweep name>/``.

    name: main
    seeds: [0, 1, 2, 3, 4]
    reference: flexmoe
    budget: "what is held equal across methods"
    common: {train.batch_size: 32, train.patience: 10}
    methods:
      flexmoe: configs/flexmoe.yaml
      flexmoe-token: {preset: configs/flexmoe.yaml, overrides: {model.fill: token}}
    grid:
      - {data.name: mfeat, data.missing: "mcar:0.3"}
    per_combination: true   # also test every combination of observed modalities once (Flex-MoE's table)
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from multimoe.config import ConfigError, load_config, load_yaml, to_dict

SWEEP_KEYS = ("name", "description", "seeds", "reference", "budget", "common", "methods", "grid", "per_combination")


@dataclass
class Sweep:
    name: str
    methods: dict[str, dict]  # method -> {"preset": path, "overrides": {dotted key: value}}
    grid: list[dict]  # points: {dotted key: value}
    seeds: list[int]
    common: dict = field(default_factory=dict)
    reference: str | None = None
    budget: str = ""
    description: str = ""
    per_combination: bool = False
    source: Path | None = None  # the sweep file

    digests: dict = field(default_factory=dict)  # (method, point index) -> digest of the resolved config

    def cells(self) -> list[dict]:
        return [
            {"method": m, "point": point, "seed": seed, "key": cell_key(m, point, seed, self.digests.get((m, i), ""))}
            for i, point in enumerate(self.grid)
            for m in self.methods
            for seed in self.seeds
        ]

    def cell_overrides(self, cell: dict) -> tuple[str, dict]:
        """The cell's preset path and its overrides: common < method < grid point < seed."""
        spec = self.methods[cell["method"]]
        over = {**self.common, **spec.get("overrides", {}), **cell["point"], "seed": cell["seed"]}
        return spec["preset"], {"method": cell["method"], **over}


def cell_key(method: str, point: dict, seed: int, digest: str = "") -> str:
    return f"{method}|{json.dumps(point, sort_keys=True)}|{seed}|{digest}"


def config_digest(cfg) -> str:
    """A digest of everything that decides a cell's result (not where it is written or how it is shown)."""
    d = to_dict(cfg)
    for key in ("out_dir", "name", "seed"):
        d.pop(key)
    for key in ("threads", "progress", "device"):
        d["train"].pop(key)
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file: every cell's config must load before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist (sweeps live in configs/sweeps/)")
    try:
        raw = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep file {path} is not valid YAML: {e}") from None
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"sweep file {path}: unknown key '{unknown[0]}'; valid keys: {', '.join(SWEEP_KEYS)}")
    for key in ("methods", "grid", "seeds"):
        if not raw.get(key):
            raise ConfigError(f"sweep file {path} needs a non-empty '{key}'")
    root = path.parent
    methods = {}
    for name, spec in raw["methods"].items():
        spec = {"preset": spec} if isinstance(spec, str) else dict(spec)
        if set(spec) - {"preset", "overrides"} or "preset" not in spec:
            raise ConfigError(f"sweep {path}: method '{name}' needs 'preset' and optional 'overrides'")
        preset = Path(spec["preset"])
        if not preset.is_file():  # relative to the working directory, else to the sweep file
            preset = root / spec["preset"]
        methods[str(name)] = {"preset": str(preset), "overrides": dict(spec.get("overrides") or {})}
    grid = [dict(p or {}) for p in raw["grid"]]
    sweep = Sweep(
        name=str(raw.get("name") or path.stem),
        methods=methods,
        grid=grid,
        seeds=[int(s) for s in raw["seeds"]],
        common=dict(raw.get("common") or {}),
        reference=raw.get("reference"),
        budget=str(raw.get("budget") or ""),
        description=str(raw.get("description") or ""),
        per_combination=bool(raw.get("per_combination", False)),
        source=path,
    )
    if sweep.reference is not None and sweep.reference not in methods:
        raise ConfigError(f"sweep {path}: reference '{sweep.reference}' is not one of the methods {list(methods)}")
    for i, point in enumerate(sweep.grid):  # every (method, point) must make a valid config
        for method in methods:
            preset, over = sweep.cell_overrides({"method": method, "point": point, "seed": 0})
            try:
                cfg = load_config(preset, [f"{k}={_yaml_scalar(v)}" for k, v in over.items()])
            except ConfigError as e:
                raise ConfigError(f"sweep {path}, method '{method}', point {point}: {e}") from None
            sweep.digests[(method, i)] = config_digest(cfg)
    return sweep


def _yaml_scalar(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# ---------------------------------------------------------------------------------------------------------------
# The results file: one JSON line per finished cell, appended by one writer; a torn last line is repaired.


def read_cells(path: str | Path, repair: bool = False) -> list[dict]:
    """Finished cells in ``path``. A final line cut short by a kill (no newline) is ignored, and cut off when
    ``repair``; an unreadable complete line is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1  # bytes up to the last newline
    cells = []
    for line in data[:complete].split(b"\n"):
        if line.strip():
            try:
                cells.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    if repair and complete < len(data):
        with open(path, "r+b") as f:
            f.truncate(complete)
    return cells


def append_cell(path: Path, record: dict) -> None:
    """Append one line in a single write, then fsync: a kill leaves either the whole line or a torn tail."""
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------------
# Running one cell (in a worker process)


def _die_with_parent() -> None:
    """Worker start-up: on Linux, ask the kernel to kill this worker when the bench process dies (a killed bench
    would otherwise leave its workers training cells whose results nobody records)."""
    if sys.platform.startswith("linux"):
        import contextlib
        import ctypes
        import signal

        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the bench died before prctl took effect
            os._exit(1)


def run_cell(preset: str, overrides: dict, out_dir: str, threads: int, per_combination: bool) -> dict:
    """Train and test one cell; returns the record appended to cells.jsonl (errors are recorded, not raised)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)
    from multimoe.evaluate import evaluate_combinations
    from multimoe.train import train

    items = [f"{k}={_yaml_scalar(v)}" for k, v in overrides.items()]
    items += [f"out_dir={out_dir}", "train.progress=false", f"train.threads={threads}"]
    try:
        cfg = load_config(preset, items)
        result = train(cfg)
        s = result.summary
        record = {
            "status": "ok",
            "dataset": s["dataset"],
            "classes": len(result.splits.schema.classes),
            "test": s["test"]["overall"],
            "val": s["val"]["overall"],
            "test_per_size": s["test"]["per_size"],
            "test_per_combination": s["test"]["per_combination"],
            "best_epoch": s["best_epoch"],
            "epochs_run": s["epochs_run"],
            "train_seconds": s["train_seconds"],
            "parameters": s["parameters"],
            "active_parameters": s["active_parameters"],
            "flops_per_sample": s["flops_per_sample"],
            "run": Path(s["run_dir"]).name,
        }
        if per_combination:
            record["combinations"] = evaluate_combinations(
                result.model, result.splits.test, result.splits.natural_NM, cfg.train.eval_batch_size
            )
        return record
    except Exception as e:  # recorded so the sweep goes on; rerun to retry
        return {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}


# ---------------------------------------------------------------------------------------------------------------
# Running a sweep


def _brief(metrics: dict) -> str:
    auc = "-" if metrics["auc"] is None else f"{metrics['auc']:.3f}"
    return f"acc {metrics['accuracy']:.3f} auc {auc}"


def run_sweep(sweep: Sweep, results_dir: str | Path, jobs: int = 0, threads: int = 1, progress: bool = True) -> Path:
    """Run every cell of ``sweep`` not yet in ``<results_dir>/cells.jsonl``; returns that file. Restartable."""
    results_dir = Path(results_dir)
    out_dir = results_dir / sweep.name
    out_dir.mkdir(parents=True, exist_ok=True)
    results = results_dir / "cells.jsonl"
    done = {c["key"] for c in read_cells(results, repair=True) if c.get("status") == "ok"}
    todo = [c for c in sweep.cells() if c["key"] not in done]
    jobs = jobs or os.cpu_count() or 1
    started = time.time()
    total = len(sweep.cells())
    bar = tqdm(total=total, initial=total - len(todo), desc=f"bench {sweep.name}", unit="cell", disable=not progress)
    runs_dir = str(results_dir / "runs")
    done_now = 0
    if todo:
        ctx = multiprocessing.get_context("spawn")
        fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}  # a new process per cell
        pool_args = dict(max_workers=min(jobs, len(todo)), mp_context=ctx, initializer=_die_with_parent, **fresh)
        with ProcessPoolExecutor(**pool_args) as pool:
            pending = {}
            for cell in todo:
                preset, over = sweep.cell_overrides(cell)
                fut = pool.submit(run_cell, preset, over, runs_dir, threads, sweep.per_combination)
                pending[fut] = cell
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    cell = pending.pop(fut)
                    record = {**cell, **fut.result()}
                    append_cell(results, record)
                    done_now += 1
                    _log_session(out_dir, started, done_now, jobs)  # a killed session still counts its time
                    bar.update(1)
                    status = record["status"] if record["status"] != "ok" else _brief(record["test"])
                    bar.set_postfix_str(f"{cell['method']} seed {cell['seed']}: {status}", refresh=True)
                    if record["status"] != "ok":
                        tqdm.write(f"cell {cell['key']} failed: {record['error']}")
    bar.close()
    _log_session(out_dir, started, done_now, jobs)
    return results


def read_sessions(out_dir: str | Path) -> list[dict]:
    """The sweep's sessions in order, each its last logged line: start time, seconds, cells run, workers."""
    return list({s["started"]: s for s in read_cells(Path(out_dir) / "sessions.jsonl")}.values())


def _log_session(out_dir: Path, started: float, cells_run: int, jobs: int) -> None:
    """One line per finished cell and one at the end, so a killed session still counts; see read_sessions."""
    record = {"started": started, "seconds": time.time() - started, "cells_run": cells_run, "jobs": jobs}
    append_cell(out_dir / "sessions.jsonl", record)
