"""Running a sweep: every cell not yet in the store, in fresh worker processes (one per core by default, one torch
thread each) or as tasks on a Ray cluster (``executor="ray"``); the bench process alone appends finished cells to the
store, so the store keeps one writer whichever runs the cells.

On Ray each cell is one task asking for ``threads`` CPUs (and one GPU when the sweep's overrides put the cell on
CUDA). Ray runs a task again when its worker dies mid-cell (``max_retries``), so a lost worker costs that cell's
time and nothing else; a cell that raises is recorded as an error, as in the local pool. A killed bench takes its
tasks with it (Ray cancels a dead driver's tasks), and the restart runs the cells not yet stored."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from multimoe.bench.store import STORE_VERSION, append_cell, log_session, read_cells, writer_lock
from multimoe.bench.sweep import Sweep, yaml_scalar
from multimoe.config import ConfigError
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
            "train_flops_per_sample": s.get("train_flops_per_sample"),  # None for the scikit-learn baselines
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


EXECUTORS = ("local", "ray")  # where cells run: a local process pool | tasks on a Ray cluster (the ray extra)


def run_sweep(sweep: Sweep, results_dir: str | Path, jobs: int = 0, threads: int = 1, progress: bool = True,
              executor: str = "local", address: str | None = None) -> Path:  # fmt: skip
    """Run every cell of ``sweep`` not yet in ``<results_dir>/cells.jsonl``; returns that file. Restartable.
    ``executor``: ``local`` (``jobs`` worker processes, default one per core) or ``ray`` (the cluster at
    ``address``, or a local Ray instance of ``jobs`` CPUs when None)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    results_dir = Path(results_dir)
    with writer_lock(results_dir):  # one bench per store: a second one ends with an error naming the first
        return _run_locked(sweep, results_dir, jobs, threads, progress, executor, address)


def _run_locked(sweep: Sweep, results_dir: Path, jobs: int, threads: int, progress: bool, executor: str,
                address: str | None) -> Path:  # fmt: skip
    out_dir = results_dir / sweep.name
    out_dir.mkdir(parents=True, exist_ok=True)
    results = results_dir / "cells.jsonl"
    done = {c["key"] for c in read_cells(results, repair=True) if c.get("status") == "ok"}
    planned = sweep.planned()  # the sweep file's skip entries are never run
    todo = [c for c in planned if c["key"] not in done]
    jobs = jobs or os.cpu_count() or 1
    started = time.time()
    total = len(planned)
    bar = tqdm(total=total, initial=total - len(todo), desc=f"bench {sweep.name}", unit="cell", disable=not progress)
    runs_dir = str(results_dir / "runs")
    done_now = 0
    if todo:
        pool = _local_pool(min(jobs, len(todo))) if executor == "local" else _ray_pool(address, jobs)
        with pool as (submit, finished):
            pending = {}
            for cell in todo:
                preset, over = sweep.cell_overrides(cell)
                gpus = 1 if str(over.get("train.device", "")).startswith("cuda") else 0
                pending[submit(preset, over, runs_dir, threads, sweep.per_combination, gpus)] = cell
            while pending:
                for handle, outcome in finished(list(pending)):
                    cell = pending.pop(handle)
                    record = {**cell, **outcome, "store_version": STORE_VERSION}
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


# An executor: ``submit(preset, overrides, out_dir, threads, per_combination, gpus)`` starts ``run_cell`` and returns a
# handle; ``finished(handles)`` waits for at least one and returns (handle, record) for each that has finished.
Pool = tuple[Callable[..., object], Callable[[list], list[tuple[object, dict]]]]


@contextmanager
def _local_pool(workers: int) -> Iterator[Pool]:
    """A fresh spawned process per cell, dying with the bench. Interrupted (Ctrl-C) or failing, the bench stops at
    once: the queued cells are cancelled and the running ones killed (the pool's own exit would wait for every
    running cell, and a Ctrl-C that reached only the workers would let the next queued cells start)."""
    ctx = multiprocessing.get_context("spawn")
    fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}  # a new process per cell
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=die_with_parent, **fresh)

    def submit(preset, over, runs_dir, threads, per_combination, gpus):
        return pool.submit(run_cell, preset, over, runs_dir, threads, per_combination)

    def finished(handles):
        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        return [(fut, fut.result()) for fut in done]

    try:
        yield submit, finished
    except BaseException:
        workers_now = list((getattr(pool, "_processes", None) or {}).values())  # no public handle before 3.14
        pool.shutdown(wait=False, cancel_futures=True)
        for process in workers_now:
            process.kill()
        raise
    pool.shutdown(wait=True)


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--executor ray needs the package ray, which is not installed: pip install 'multimoe[ray]'"
        ) from None
    return ray


@contextmanager
def _ray_pool(address: str | None, cpus: int) -> Iterator[Pool]:
    """Tasks on the Ray cluster at ``address`` (a local instance of ``cpus`` CPUs when None); this process stays
    the driver that records the cells."""
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        local = {"num_cpus": cpus} if address is None else {}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **local)
    task = ray.remote(max_retries=3)(run_cell)  # a worker lost mid-cell: the cell runs again
    try:

        def submit(preset, over, runs_dir, threads, per_combination, gpus):
            options = task.options(num_cpus=threads, num_gpus=gpus)
            return options.remote(preset, over, runs_dir, threads, per_combination)

        def finished(handles):
            done, _ = ray.wait(handles, num_returns=1)
            return [(ref, ray.get(ref)) for ref in done]

        yield submit, finished
    finally:
        if started:
            ray.shutdown()
