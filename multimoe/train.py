"""Training: one readable loop with the Flex-MoE curriculum, best-validation checkpoint and optional early stopping
(the selection rule: selection.py).

``train(cfg)`` reads top to bottom: check the config, prepare the data (and resolve the model config for it), open
the run folder (new, or the one being resumed: resuming is one step before the loop, runs/resume.py), then either
fit a scikit-learn baseline or run the epochs, and finally test the selected checkpoint. The run folder's files are
named in runs/folder.py. A non-finite loss or gradient stops training with a message naming the step (guard.py).
Epochs and steps count from 1. Under torchrun the same loop runs in every process on its shard of each batch
(distributed.py: what each rank computes, and which rank writes); in one process its context ``SINGLE`` changes
nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from multimoe import distributed, registry
from multimoe.batch import drop_modalities
from multimoe.blend import Trees, fit_blend
from multimoe.config import Config, ConfigError, TrainConfig
from multimoe.cost import model_costs
from multimoe.data.dataset import MultimodalData, Splits
from multimoe.data.prepare import prepare
from multimoe.data.table import Table, build_table
from multimoe.device import peak_memory_mb
from multimoe.distributed import SINGLE, Context, Share
from multimoe.evaluate import evaluate
from multimoe.guard import FiniteGuard, grad_norm
from multimoe.model import build_model, compile_model, resolve
from multimoe.pools import fill_pools, resolve_pool_rows
from multimoe.process import release_freed_memory
from multimoe.runs import resume
from multimoe.runs.checkpoint import load_checkpoint, read_meta, save_checkpoint
from multimoe.runs.folder import RunFolder
from multimoe.runs.resume import Progress
from multimoe.selection import record_epoch, validation_value
from multimoe.version import __version__


@dataclass
class RunResult:
    run_dir: Path
    best_epoch: int  # from 1
    val: dict
    test: dict
    summary: dict
    model: object = None  # the selected model (torch module, or a fitted scikit-learn baseline)
    splits: Splits | None = None  # the data it was trained and tested on
    rank: int = 0  # this process's rank under torchrun (rank 0 wrote the run folder)
    world_size: int = 1  # processes that trained the run


def train(cfg: Config, table: Table | None = None, splits: Splits | None = None) -> RunResult:
    """Train ``cfg`` on its dataset (or on ``table``, e.g. ``Table.from_frame(df, ...)``) and test the best epoch.

    With ``train.resume`` set to a run folder, continue that run after its last completed epoch (a run that already
    finished reports its summary). Under torchrun (WORLD_SIZE > 1) every process calls it; rank 0 writes the run
    folder, and every rank returns the same metrics."""
    start = time.perf_counter()
    t = registry.check(cfg).train
    ctx = distributed.init(t, cfg.model.moe.expert_parallel)
    with ctx.failures():
        return _train(cfg, table, splits, ctx, start)


def _train(cfg: Config, table: Table | None, splits: Splits | None, ctx: Context, start: float) -> RunResult:
    t = cfg.train
    if t.resume and (done := ctx.on_main(lambda: resume.finished_summary(cfg))) is not None:
        _log(f"run {t.resume} already finished; reporting its results", ctx)
        return RunResult(Path(t.resume), done["best_epoch"], done["val"], done["test"], done, rank=ctx.rank,
                         world_size=ctx.world)  # fmt: skip
    if ctx.active and registry.is_baseline(cfg.model.arch):
        raise ConfigError(f"model.arch={cfg.model.arch} (scikit-learn) runs in one process: launch it without torchrun")
    if ctx.active and cfg.model.blend != "none":
        raise ConfigError(f"model.blend={cfg.model.blend} fits its trees in one process: launch it without torchrun")
    device = ctx.device
    in_memory = table is not None  # eval and report must then be handed the same table (runs/reopen.py)
    cfg, table, splits, notes = _prepare(cfg, table, splits, ctx)
    if cfg.model.blend != "none":
        Trees(splits.schema)  # the trees' modality kinds, checked before the network trains
    splits.set_workers(t.workers)  # batches of series, image, text and embedding modalities: in loader workers
    folder = RunFolder(
        ctx.on_main(lambda: (RunFolder.open(t.resume) if t.resume else RunFolder.create(cfg, table.name)).path)
    )
    config = dataclasses.replace(cfg, train=dataclasses.replace(t, resume=None))
    if t.resume:  # rank 0 reads the run folder: the other ranks need no shared filesystem
        ctx.on_main(lambda: resume.check_same_config(folder, dataclasses.asdict(config)))
    if ctx.main:
        folder.write_config(config)
        if splits.preprocessing is not None:  # what `multimoe predict` applies to new rows
            folder.write_preprocess(splits.preprocessing)
    run = _Run(cfg, folder, splits, notes, device, start, ctx)
    meta = {"config": dataclasses.asdict(config), "schema": splits.schema.to_dict(), "multimoe_version": __version__,
            "select": t.select, "in_memory_table": in_memory}  # fmt: skip
    if registry.is_baseline(cfg.model.arch):
        model = registry.ARCHS.build(cfg.model.arch, cfg.model, cfg.seed).fit(splits.train)
        save_checkpoint(folder.best, model, {**meta, "epoch": 1, "value": None})  # the fitted arrays, no pickle
        return run.finish(model, Progress(epoch=1, best_epoch=1), model.costs())

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, splits.schema).to(device)
    fill_pools(model, splits.train)  # methods that draw training samples keep the training split (pools.py)
    costs = model_costs(model, cfg.model, splits.schema)  # of the whole model, before any expert is sharded
    if t.compile:
        compile_model(model)
    ctx.shard_experts(model, t.compile)
    optimizer = make_optimizer(model, t)
    progress = (
        ctx.restore(lambda m, o: resume.restore(folder, m, o, meta), model, optimizer) if t.resume else Progress()
    )
    if t.resume:
        _log(f"resuming {folder.path} after epoch {progress.epoch} of {t.epochs}", ctx)
    run.start -= progress.seconds  # the run's time over all its sessions
    fit(model, optimizer, splits, cfg, folder, progress, meta, device, run.start, ctx)
    del optimizer  # testing needs neither its state nor the gradients: ~3x the weights, freed before evaluation
    model.zero_grad(set_to_none=True)
    release_freed_memory()
    if progress.best_epoch == 0:  # the validation metric was never defined: keep the last epoch
        progress.best_epoch = progress.epoch
        whole, _ = ctx.full(model)
        if ctx.main:
            save_checkpoint(folder.best, whole, {**meta, "epoch": progress.epoch, "value": None})
    ctx.restore(lambda m, o: load_checkpoint(folder.best, m, expect_model_config=meta["config"]["model"]), model)
    if cfg.model.blend != "none":
        model = _blend(model, cfg, splits, folder, notes, device, ctx)
        costs = model.costs(costs)
    return run.finish(model, progress, costs)


def _blend(network, cfg: Config, splits: Splits, folder: RunFolder, notes: list[str], device, ctx: Context):
    """The selected network blended with gradient boosting (with ``hgb+svm`` also the per-modality machines;
    ``model.blend``, multimoe/blend.py), saved as the run's best model; the chosen weights go into the notes and the
    checkpoint's metadata."""
    model, chosen = fit_blend(network, cfg.model, cfg.seed, splits.train, splits.val, cfg.train.eval_batch_size,
                              device)  # fmt: skip
    notes.append(f"blend: {model.describe()}, the weights of lowest validation log loss")
    best_meta = read_meta(folder.best)
    save_checkpoint(folder.best, model, {**best_meta, "blend": chosen})
    return model


def fit(model, optimizer, splits: Splits, cfg: Config, folder: RunFolder, progress: Progress, meta: dict,
        device: torch.device, start: float, ctx: Context = SINGLE) -> None:  # fmt: skip
    """The epochs after ``progress.epoch``: train, validate, log, save the state and the best weights (in the
    order resume.py relies on), stop early when ``train.patience`` epochs bring no improvement. ``ctx``: this
    process's place in a distributed run (rank 0 writes; every rank validates on the gathered predictions and so
    takes the same decisions)."""
    t = cfg.train
    steps = math.ceil(len(splits.train) / t.batch_size)
    guard = FiniteGuard(device, steps)
    num_present_N = splits.train.present_NM.sum(dim=1)
    bar = tqdm(total=t.epochs * steps, initial=progress.epoch * steps, desc=folder.name, unit="step",
               disable=not (t.progress and ctx.main), file=sys.stderr)  # fmt: skip
    trained = ctx.wrap(model)  # DDP under torchrun, else the model itself
    for epoch in range(progress.epoch + 1, t.epochs + 1):
        if progress.stopped:
            break
        epoch_start = time.perf_counter()
        ctx.seed_epoch(cfg.seed, epoch)
        order = epoch_order(epoch, num_present_N, t, cfg.seed)
        losses = run_epoch(trained, optimizer, splits.train, order, t, device, functools.partial(guard.observe, epoch),
                           bar.update, progress.carry, ctx)  # fmt: skip
        guard.check()
        release_freed_memory()  # the heap the steps' varied shapes fragmented (device.py retains it within an epoch)
        val, progress.carry = validate(model, splits.val, t, device, ctx)
        release_freed_memory()
        value = validation_value(val, t.select)
        improved = record_epoch(progress, epoch, value, t.select, t.patience)
        record = {"epoch": epoch, "phase": "warmup" if epoch <= t.warmup_epochs else "train",
                  "train_loss": losses[0] / steps, "gate_loss": losses[1] / steps, "val_loss": val["loss"],
                  **{f"val_{k}": v for k, v in val["overall"].items() if k != "n"}, "best": improved,
                  "seconds": time.perf_counter() - epoch_start}  # fmt: skip
        progress.seconds = time.perf_counter() - start
        whole, whole_optimizer = ctx.full(model, optimizer)  # with sharded experts: gathered (every rank takes part)
        if ctx.main:
            folder.log_epoch(record, val["routing"])
            resume.save_progress(folder, whole, whole_optimizer, progress, meta)
            if improved:
                save_checkpoint(folder.best, whole, {**meta, "epoch": epoch, "value": value})
        shown = "n/a" if value is None else f"{value:.4f}"
        bar.set_postfix(epoch=epoch, loss=f"{record['train_loss']:.3f}", **{f"val_{t.select}": shown}, refresh=False)
        if progress.stopped:
            _log(f"early stop after epoch {epoch}: no {t.select} improvement in {t.patience} epochs", ctx)
    bar.close()


def validate(model, data: MultimodalData, t: TrainConfig, device, ctx: Context = SINGLE) -> tuple[dict, float]:
    """The validation metrics, and the router loss the next epoch's first step carries: with
    ``train.carry_val_gate_loss`` the validation batches' gate losses summed (the public code's gate accumulates
    them in its ``loss`` attribute, AddtionalNoisyGate.set_loss, until a training step's FlexMoE.gate_loss reads and
    clears it), else 0. The code's evaluation batches (8) and its eval-mode balance terms give another value; the
    carried amount is a constant in either case, so the gradient does not see it. Under torchrun: summed over the
    ranks' shards."""
    if not t.carry_val_gate_loss:
        return _evaluate(model, data, t.eval_batch_size, device, ctx, breakdown=False), 0.0
    gate = []
    val = _evaluate(model, data, t.eval_batch_size, device, ctx, lambda out, batch: gate.append(out.aux_loss), False)
    return val, ctx.sum_over_ranks([float(sum(gate))])[0]


def _evaluate(model, data: MultimodalData, batch_size: int, device, ctx: Context, on_output=None,
              breakdown: bool = True) -> dict:  # fmt: skip
    """``evaluate`` (``breakdown=False``: overall metrics only, as model selection reads them), or under torchrun its
    sharded form (every rank gets the metrics of the whole split)."""
    if ctx.active:
        return ctx.evaluate(model, data, batch_size, device, on_output, breakdown)
    return evaluate(model, data, batch_size, device, on_output, breakdown)


def run_epoch(model, optimizer, data: MultimodalData, order: torch.Tensor, t: TrainConfig, device, check, tick,
              carry: float = 0.0, ctx: Context = SINGLE):  # fmt: skip
    """One pass over ``data`` in ``order``; returns the summed task and router losses. ``check(step, loss, norm)``
    sees every step before its update, ``tick()`` is called after it. ``carry``: a router loss the first step adds
    (the previous validation pass's, ``train.carry_val_gate_loss``). Under torchrun each rank runs its shard of
    every batch (``ctx.batches``) and the sums are the global batches' losses, summed over the ranks."""
    model.train()
    task_sum, gate_sum = torch.zeros(()), torch.zeros(())
    weight_C = class_weights(t, torch.zeros(0, len(data.schema.classes)))
    for step, (batch, share) in enumerate(ctx.batches(data, order, t, weight_C), start=1):
        extra = carry if step == 1 else 0.0
        task_loss, aux_loss = train_step(model, optimizer, batch.to(device), t, functools.partial(check, step), extra,
                                         share)  # fmt: skip
        task_sum += task_loss.cpu() if share is None else task_loss.cpu() * share.task
        gate_sum += aux_loss.cpu() if share is None else aux_loss.cpu() * share.gate
        tick()
    task, gate = ctx.sum_over_ranks([float(task_sum), float(gate_sum)])
    return task, gate


def train_step(model, optimizer, batch, t: TrainConfig, check=None, carry: float = 0.0, share: Share | None = None):
    """One optimisation step: (modality dropout,) forward, task loss + weighted router loss (an ensemble: the sum
    over its members of each one's own), backward, gradient
    norm (clipped when ``train.grad_clip`` > 0), ``check(loss, norm)`` before the update (the finite guard), update.
    ``carry`` is a constant router loss added to this step's (``train.carry_val_gate_loss``): it changes the loss
    and the router loss returned, never the gradient. ``share``: under torchrun, this rank's weights in the step's
    loss and the norm over all ranks (distributed.py). Returns the detached task and router losses."""
    if t.modality_dropout > 0:
        batch = batch.with_presence(drop_modalities(batch.present_BM, t.modality_dropout))
    out = model(batch)
    weight = class_weights(t, out.logits_BC)
    members = 1
    if out.member_logits_KBC is None:
        task_loss = F.cross_entropy(out.logits_BC, batch.labels_B, weight=weight)
    else:  # an ensemble (model.members): each member on its own loss; the mean is reported
        members = out.member_logits_KBC.shape[0]
        task_loss = torch.stack([F.cross_entropy(lg, batch.labels_B, weight=weight) for lg in out.member_logits_KBC])
        task_loss = task_loss.mean()
    aux_loss = out.aux_loss + carry if carry else out.aux_loss
    if share is None:
        loss = task_loss + t.gate_loss_weight * aux_loss
    else:
        loss = share.task * task_loss + t.gate_loss_weight * share.gate * aux_loss
    if members > 1:  # the losses of the members (and their mean router loss) summed: each gets its own gradient
        loss = loss * members
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = grad_norm(model, t.grad_clip) if share is None else share.norm(model, t.grad_clip)
    if check is not None:
        check(loss, norm)
    optimizer.step()
    return task_loss.detach(), aux_loss.detach()


CODE_CLASS_WEIGHTS = (0.25, 0.75)  # the public code's criterion for binary tasks (main.py train_and_evaluate)


def class_weights(t: TrainConfig, logits_BC: torch.Tensor) -> torch.Tensor | None:
    """The task loss's class weights: None (plain cross-entropy), or with ``train.class_weights=code`` on a binary
    task the public code's [0.25, 0.75] (its criterion for every dataset but ADNI; with more classes it has no
    weights to give, and the reproduction uses its plain ADNI criterion)."""
    if t.class_weights == "none" or logits_BC.shape[1] != len(CODE_CLASS_WEIGHTS):
        return None
    return logits_BC.new_tensor(CODE_CLASS_WEIGHTS)


def epoch_order(epoch: int, num_present_N: torch.Tensor, cfg: TrainConfig, seed: int) -> torch.Tensor:
    """Training order of epoch ``epoch`` (from 1), a pure function of (epoch, seed).

    Flex-MoE's curriculum ("generalize, then specialize"): for the first ``warmup_epochs`` epochs the training set
    is not shuffled and is sorted by number of observed modalities, descending (stable; ``ascending`` and
    ``random`` are the paper's ablations); afterwards every epoch is a fresh permutation.

    Samples with equal counts keep the data's order, or with ``order_ties=seeded`` a seeded random order, the same
    in every warm-up epoch: a reproducible stand-in for the public code's, which is the iteration order of a Python
    set of string ids (data.py load_and_preprocess_data) and so changes with the process's string hashing.
    """
    n = num_present_N.shape[0]
    warmup = epoch <= cfg.warmup_epochs
    g = torch.Generator().manual_seed(seed * 1_000_003 + (-1 if warmup else epoch - 1))
    if warmup and cfg.order in ("descending", "ascending"):
        key_N = -num_present_N if cfg.order == "descending" else num_present_N
        if cfg.order_ties == "stable":
            return torch.argsort(key_N, stable=True)
        ties_N = torch.randperm(n, generator=g)  # the order equal counts keep
        return ties_N[torch.argsort(key_N[ties_N], stable=True)]
    return torch.randperm(n, generator=g)  # random warm-up: one fixed order for all warm-up epochs


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # the fused kernel computes the same update in one pass (CPU and CUDA): ~15 % of a Flex-MoE step on CPU
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def _prepare(cfg: Config, table: Table | None, splits: Splits | None, ctx: Context = SINGLE
             ) -> tuple[Config, Table, Splits, list[str]]:  # fmt: skip
    """The data of a run, and its config resolved for that data (printed notes say what resolution changed)."""
    if cfg.data.spec:  # the run folder must find the user's table again from anywhere (eval, report, resume)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, spec=str(Path(cfg.data.spec).resolve())))
    table = table if table is not None else build_table(cfg.data)
    splits = splits if splits is not None else prepare(table, cfg.data, cfg.seed)
    model_cfg, notes = resolve(cfg.model, splits.schema)
    model_cfg = resolve_pool_rows(model_cfg, splits.train)
    for note in notes:
        _log(f"note: {note}", ctx)
    if table.synthetic:
        notes.append("synthetic data (generated), not a real dataset")
    return dataclasses.replace(cfg, model=model_cfg), table, splits, notes


@dataclass
class _Run:
    """What the end of a run needs to know about its start."""

    cfg: Config
    folder: RunFolder
    splits: Splits
    notes: list[str]
    device: torch.device
    start: float  # on this session's clock; moved back by the time earlier sessions of a resumed run took
    ctx: Context = SINGLE

    def finish(self, model, progress: Progress, costs: dict) -> RunResult:
        """Evaluate the selected model on validation and test, write summary.json (rank 0), return the result."""
        cfg, splits, ctx = self.cfg, self.splits, self.ctx
        fit_seconds = time.perf_counter() - self.start
        val = _evaluate(model, splits.val, cfg.train.eval_batch_size, self.device, ctx)
        test = _evaluate(model, splits.test, cfg.train.eval_batch_size, self.device, ctx)
        summary = {"run_dir": str(self.folder.path), "method": cfg.method, "dataset": splits.info["dataset"],
                   "missing": cfg.data.missing, "seed": cfg.seed, "best_epoch": progress.best_epoch,
                   "epochs_run": progress.epoch, "val": val, "test": test, **costs, "train_seconds": fit_seconds,
                   "wall_seconds": time.perf_counter() - self.start, "peak_memory_mb": peak_memory_mb(self.device),
                   "notes": self.notes + model_notes(model), "data": splits.info,
                   "multimoe_version": __version__}  # fmt: skip
        if ctx.active:
            summary["world_size"] = ctx.world
        if ctx.main:
            self.folder.write_summary(summary)
        return RunResult(self.folder.path, progress.best_epoch, val, test, summary, model, splits, ctx.rank, ctx.world)


def model_notes(model: torch.nn.Module) -> list[str]:
    """What a model says about its run (``run_notes``: e.g. how often MoE-Retriever's supports fell short)."""
    return list(model.run_notes()) if hasattr(model, "run_notes") else []


def _log(msg: str, ctx: Context = SINGLE) -> None:
    if ctx.main:
        print(msg, file=sys.stderr, flush=True)
