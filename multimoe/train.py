"""Training: one readable loop with the Flex-MoE curriculum, best-validation checkpoint and optional early stopping.

Each run writes a folder: ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per epoch), ``best.safetensors``
(weights of the best validation epoch) and ``summary.json`` (validation and test results, cost, notes). While it
runs, ``state.safetensors`` holds the last completed epoch so that ``train.resume`` can continue it (resume.py).
A non-finite loss or gradient stops training with a message naming the step (guard.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import resource
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from multimoe import __version__, resume
from multimoe.allocator import retain_freed_memory
from multimoe.baselines import fit_sklearn
from multimoe.batch import drop_modalities
from multimoe.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from multimoe.config import Config, TrainConfig, check_device, to_dict
from multimoe.cost import model_costs
from multimoe.data import Splits, Table, build_table, prepare
from multimoe.evaluate import evaluate
from multimoe.guard import FiniteGuard, grad_norm
from multimoe.model import SKLEARN_ARCHS, build_model, resolve


@dataclass
class RunResult:
    run_dir: Path
    best_epoch: int
    val: dict
    test: dict
    summary: dict
    model: object = None  # the selected model (torch module, or a fitted scikit-learn baseline)
    splits: Splits | None = None  # the data it was trained and tested on


def epoch_order(epoch: int, num_present_N: torch.Tensor, cfg: TrainConfig, seed: int) -> torch.Tensor:
    """Training order of an epoch, a pure function of (epoch, seed).

    Flex-MoE's curriculum ("generalize, then specialize"): for the first ``warmup_epochs`` epochs the training set
    is not shuffled and is sorted by number of observed modalities, descending (stable; ``ascending`` and
    ``random`` are the paper's ablations); afterwards every epoch is a fresh permutation.
    """
    n = num_present_N.shape[0]
    g = torch.Generator().manual_seed(seed * 1_000_003 + (epoch if epoch >= cfg.warmup_epochs else -1))
    if epoch < cfg.warmup_epochs:
        if cfg.order == "descending":
            return torch.argsort(-num_present_N, stable=True)
        if cfg.order == "ascending":
            return torch.argsort(num_present_N, stable=True)
        return torch.randperm(n, generator=g)  # random: one fixed random order for all warm-up epochs
    return torch.randperm(n, generator=g)


def _better(metric: str, new: float | None, best: float | None) -> bool:
    if new is None or (isinstance(new, float) and math.isnan(new)):
        return False
    if best is None:
        return True
    return new < best if metric == "loss" else new > best


def _select_value(result: dict, metric: str) -> float | None:
    return result["loss"] if metric == "loss" else result["overall"][metric]


def make_run_dir(cfg: Config, table: Table) -> Path:
    base = cfg.name or f"{cfg.method}-{table.name}-{cfg.data.missing.replace(':', '')}-s{cfg.seed}"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path(cfg.out_dir)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        path = root / (f"{base}-{stamp}" + (f"-{i}" if i else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder under {root}")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # the fused kernel computes the same update in one pass (CPU and CUDA): ~15 % of a Flex-MoE step on CPU
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def train_step(model, optimizer, batch, t: TrainConfig, check=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step: (modality dropout,) forward, task loss + weighted router loss, backward, gradient
    norm (clipped when ``train.grad_clip`` > 0), ``check(loss, norm)`` before the update (the finite guard), update.
    Returns the detached task and router losses."""
    if t.modality_dropout > 0:
        batch = batch.with_presence(drop_modalities(batch.present_BM, t.modality_dropout))
    out = model(batch)
    task_loss = F.cross_entropy(out.logits_BC, batch.labels_B)
    loss = task_loss + t.gate_loss_weight * out.aux_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = grad_norm(model, t.grad_clip)
    if check is not None:
        check(loss, norm)
    optimizer.step()
    return task_loss.detach(), out.aux_loss.detach()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train(cfg: Config, table: Table | None = None, splits: Splits | None = None) -> RunResult:
    """Train ``cfg`` on its dataset (or on ``table``, e.g. ``Table.from_frame(df, ...)``) and test the best epoch.

    With ``train.resume`` set to a run folder, continue that run after its last completed epoch (a run that already
    finished reports its summary)."""
    start = time.perf_counter()
    t = cfg.train
    if t.resume:
        done = resume.finished_summary(cfg)
        if done is not None:
            _log(f"run {t.resume} already finished; reporting its results")
            return RunResult(Path(t.resume), done["best_epoch"], done["val"], done["test"], done)
    if t.threads:  # torch's and the BLAS/OpenMP pools scikit-learn uses (oversubscribed pools thrash)
        torch.set_num_threads(t.threads)
        threadpool_limits(t.threads)
    device = check_device(t.device)
    if device.type == "cpu":
        retain_freed_memory()  # no page faults on activations re-allocated every step (multimoe/allocator.py)
    if cfg.data.spec:  # the run folder must find the user's table again from anywhere (eval, report, resume)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, spec=str(Path(cfg.data.spec).resolve())))
    in_memory = table is not None  # eval and report must then be handed the same table (runs.open_run)
    table = table if table is not None else build_table(cfg.data)
    splits = splits if splits is not None else prepare(table, cfg.data, cfg.seed)
    model_cfg, notes = resolve(cfg.model, splits.schema)
    cfg = dataclasses.replace(cfg, model=model_cfg)
    for note in notes:
        _log(f"note: {note}")
    if table.synthetic:
        notes.append("synthetic data (generated), not a real dataset")

    config_dict = to_dict(cfg)
    config_dict["train"]["resume"] = None  # the run folder describes the run, not how it was last started
    if t.resume:
        run_dir = Path(t.resume)
        resume.check_same_config(run_dir, config_dict)
    else:
        run_dir = make_run_dir(cfg, table)
    atomic_write(run_dir / "config.yaml", lambda p: Path(p).write_text(yaml.safe_dump(config_dict, sort_keys=False)))
    if model_cfg.arch in SKLEARN_ARCHS:
        model = fit_sklearn(model_cfg, splits.train, cfg.seed)
        costs = {"parameters": model.parameters(), "active_parameters": model.parameters()}
        costs["flops_per_sample"] = model.flops_per_sample()
        return _finish(cfg, table, splits, run_dir, model, resume.Progress(0, None, 0), notes, costs, start, device)

    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg, splits.schema).to(device)
    if t.compile:
        model.compile()  # in place: parameter names and checkpoints stay those of the plain model
    optimizer = _make_optimizer(model, t)
    meta = {
        "config": config_dict,
        "schema": splits.schema.to_dict(),
        "multimoe_version": __version__,
        "select": t.select,
        "in_memory_table": in_memory,
    }
    progress = resume.restore(run_dir, model, optimizer, meta) if t.resume else resume.Progress()
    if t.resume:
        _log(f"resuming {run_dir} after epoch {progress.epoch + 1} of {t.epochs}")
    seconds_before = progress.seconds

    train_data = splits.train
    num_present_N = train_data.present_NM.sum(dim=1)
    steps_per_epoch = math.ceil(len(train_data) / t.batch_size)
    guard = FiniteGuard(device, steps_per_epoch)
    ckpt_path = run_dir / resume.BEST_FILE
    bar = tqdm(
        total=t.epochs * steps_per_epoch,
        initial=(progress.epoch + 1) * steps_per_epoch,
        desc=run_dir.name,
        unit="step",
        disable=not t.progress,
        file=sys.stderr,
    )
    with open(run_dir / "metrics.jsonl", "a") as metrics_file, open(run_dir / "routing.jsonl", "a") as routing_file:
        for epoch in range(progress.epoch + 1, t.epochs):
            if progress.stopped:
                break
            model.train()
            epoch_start = time.perf_counter()
            task_sum = torch.zeros(())
            gate_sum = torch.zeros(())
            order = epoch_order(epoch, num_present_N, t, cfg.seed)
            for step, batch in enumerate(train_data.batches(t.batch_size, order)):
                check = functools.partial(guard.observe, epoch, step)
                task_loss, aux_loss = train_step(model, optimizer, batch.to(device), t, check)
                task_sum += task_loss.cpu()
                gate_sum += aux_loss.cpu()
                bar.update(1)
            guard.check()
            val = evaluate(model, splits.val, t.eval_batch_size, device)
            value = _select_value(val, t.select)
            improved = _better(t.select, value, progress.best_value)
            if improved:
                progress.best_value, progress.best_epoch, progress.stale = value, epoch, 0
            else:
                progress.stale += 1
            record = {
                "epoch": epoch,
                "phase": "warmup" if epoch < t.warmup_epochs else "train",
                "train_loss": float(task_sum) / steps_per_epoch,
                "gate_loss": float(gate_sum) / steps_per_epoch,
                "val_loss": val["loss"],
                **{f"val_{k}": v for k, v in val["overall"].items() if k != "n"},
                "best": improved,
                "seconds": time.perf_counter() - epoch_start,
            }
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
            if val["routing"]:  # validation routing per epoch, for routing-drift reports
                routing_file.write(json.dumps({"epoch": epoch, "split": "val", "layers": val["routing"]}) + "\n")
                routing_file.flush()
            # order matters for resuming after a kill: metric lines, then the state, then the best weights
            progress.epoch, progress.stopped = epoch, bool(t.patience and progress.stale >= t.patience)
            progress.seconds = seconds_before + time.perf_counter() - start
            resume.save_progress(run_dir, model, optimizer, progress, meta)
            if improved:
                save_checkpoint(ckpt_path, model, {**meta, "epoch": epoch, "value": value})
            bar.set_postfix(
                epoch=epoch + 1,
                loss=f"{record['train_loss']:.3f}",
                **{f"val_{t.select}": "n/a" if value is None else f"{value:.4f}"},
                refresh=False,
            )
            if progress.stopped:
                _log(f"early stop after epoch {epoch + 1}: no {t.select} improvement in {t.patience} epochs")
    bar.close()

    if progress.best_epoch < 0:  # validation metric never defined: keep the last epoch
        save_checkpoint(ckpt_path, model, {**meta, "epoch": progress.epoch, "value": None})
        progress.best_epoch = progress.epoch
    load_checkpoint(ckpt_path, model, expect_model_config=config_dict["model"])
    costs = model_costs(model, model_cfg, splits.schema)
    return _finish(cfg, table, splits, run_dir, model, progress, notes, costs, start - seconds_before, device)


def _finish(cfg, table, splits, run_dir, model, progress, notes, costs, start, device) -> RunResult:
    """Evaluate the selected model on validation and test, write summary.json, return the result. ``start`` is
    the run's start on this session's clock (earlier sessions of a resumed run included)."""
    fit_seconds = time.perf_counter() - start
    val = evaluate(model, splits.val, cfg.train.eval_batch_size, device)
    test = evaluate(model, splits.test, cfg.train.eval_batch_size, device)
    summary = {
        "run_dir": str(run_dir),
        "method": cfg.method,
        "dataset": table.name,
        "missing": cfg.data.missing,
        "seed": cfg.seed,
        "best_epoch": progress.best_epoch,
        "epochs_run": progress.epoch + 1,
        "val": val,
        "test": test,
        **costs,
        "train_seconds": fit_seconds,
        "wall_seconds": time.perf_counter() - start,
        "peak_memory_mb": _peak_memory_mb(device),
        "notes": notes,
        "data": splits.info,
        "multimoe_version": __version__,
    }
    atomic_write(run_dir / resume.SUMMARY_FILE, lambda p: Path(p).write_text(json.dumps(summary, indent=1)))
    resume.finish(run_dir)
    return RunResult(run_dir, progress.best_epoch, val, test, summary, model, splits)
