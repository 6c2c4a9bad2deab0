"""Running a sweep: every cell not yet in the store, in fresh worker processes (one per core by default, one torch
thread each); the bench process alone appends finished cells to the store."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from tqdm.auto import tqdm

from multimoe.bench.store import STORE_VERSION, append_cell, log_session, read_cells
from multimoe.bench.sweep import Sweep, yaml_scalar
from multimoe.process import die_with_parent
from multimoe.registry import load_config


def run_cell(preset: str, overrides: dict, out_dir: str, threads: int, per_combination: bool) -> dict:
    """Train and test one cell (in a worker process); returns the record appended to cells.jsonl (errors are
    recorded, not raised). The library loads here, in the worker, not in the bench process."""
    from multimoe.device import set_threads
    from multimoe.evaluate import evaluate_combinations
    from multimoe.train import train

    set_threads(threads)
    items = [f"{k}={yaml_scalar(v)}" for k, v in overrides.items()]
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
        pool_args = dict(max_workers=min(jobs, len(todo)), mp_context=ctx, initializer=die_with_parent, **fresh)
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
                    record = {**cell, **fut.result(), "store_version": STORE_VERSION}
                    append_cell(results, record)
                    done_now += 1
                    log_session(out_dir, started, done_now, jobs)  # a killed session still counts its time
                    bar.update(1)
                    status = record["status"] if record["status"] != "ok" else _brief(record["test"])
                    bar.set_postfix_str(f"{cell['method']} seed {cell['seed']}: {status}", refresh=True)
                    if record["status"] != "ok":
                        tqdm.write(f"cell {cell['key']} failed: {record['error']}")
    bar.close()
    log_session(out_dir, started, done_now, jobs)
    return results
