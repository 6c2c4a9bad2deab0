"""End to end: training samples per second of Flex-MoE against the ``dense`` method with equal active parameters.

Both models are built from configs/flexmoe.yaml (D=128, 16 tokens per modality, 16 experts, top-4, expert hidden
256, batch 8, fused Adam); ``dense`` replaces the MoE with one feed-forward of hidden top_k x 256. Same data (by
default ``synthetic`` with 4 modalities, 30 % of modalities missing), same run: whole training epochs (forward,
backward, optimizer, as ``multimoe.train`` runs them) alternate between the models after a warm-up epoch each,
and each model's median epoch time gives its samples per second. ``--compile`` also times both models under
``torch.compile`` (``train.compile=true``), warm-up epochs (which include compilation) excluded.

``--recipe published`` instead measures how close the published recipe itself (``make demo``: configs/flexmoe.yaml
on mfeat under mcar:0.3, batch 8, one thread by default) comes to the machine: whole epochs as ``multimoe.train``
runs them (training steps, then validation), its training FLOP rate (cost.py's forward FLOPs per sample, x3 for a
training sample, x1 for a validation one, / the epoch's seconds) against a large float32 ``torch.mm`` timed in the
same run on the same threads between the epochs, and the process's peak resident memory over them. One more epoch runs
under torch.profiler: the seconds inside matrix products, the fraction of ``torch.mm`` the recipe would reach if
nothing but those products took time (how far removing every other cost could take it), and the operators that take
the most time.

    python benchmarks/train_throughput.py
    python benchmarks/train_throughput.py --compile --epochs 5 data.name=landsat
    python benchmarks/train_throughput.py --recipe published --epochs 5

Extra arguments are config overrides applied to both models. The last line printed is one JSON object with
``flexmoe_over_dense`` (samples per second of Flex-MoE / dense; 1 = as fast as dense) and the lowest and highest
ratio within one round (the machine's noise).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from multimoe.config import Config
from multimoe.cost import model_costs
from multimoe.data.prepare import prepare
from multimoe.data.table import build_table
from multimoe.model import build_model, compile_model, resolve
from multimoe.process import release_freed_memory, retain_freed_memory
from multimoe.registry import load_config
from multimoe.train import epoch_order, make_optimizer, run_epoch, train_step, validate

PRESET = Path(__file__).resolve().parents[1] / "configs" / "flexmoe.yaml"
DEFAULTS = ["data.name=synthetic", "data.synthetic.modalities=4", "data.missing=mcar:0.3", "train.progress=false"]
PUBLISHED = ["data.name=mfeat", "data.missing=mcar:0.3", "train.progress=false"]  # make demo's run
MM_SIZE = 2048  # the reference product: 2048 x 2048 @ 2048 x 2048, float32 (17.2 GFLOP)


def peak_rss_mb() -> float:
    """The process's peak resident set so far, MB (Linux reports kB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mm_rate(repeats: int = 3) -> float:
    """FLOP/s of a large float32 matrix product on this process's threads (median of ``repeats``)."""
    a, b = torch.randn(MM_SIZE, MM_SIZE), torch.randn(MM_SIZE, MM_SIZE)
    torch.mm(a, b)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * MM_SIZE**3 / statistics.median(times)


def published(args, overrides: list[str]) -> None:
    """The published recipe's epochs (training + validation, as multimoe.train.fit runs them) against the machine's
    matrix-multiply rate measured between them."""
    torch.set_num_threads(args.threads)
    retained = not args.system_malloc and retain_freed_memory()
    cfg = load_config(PRESET, PUBLISHED + overrides)
    splits = prepare(build_table(cfg.data), cfg.data, cfg.seed)
    model_cfg, _ = resolve(cfg.model, splits.schema)
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg, splits.schema)
    t = cfg.train
    fwd = model_costs(model, model_cfg, splits.schema)["flops_per_sample"]
    if t.compile:  # train.compile=true: as multimoe.train compiles it (the MoE engine stays eager)
        compile_model(model)
    optimizer = make_optimizer(model, cfg.train)
    n_train, n_val = len(splits.train), len(splits.val)
    flops = fwd * (3 * n_train + n_val)
    num_present_N = splits.train.present_NM.sum(dim=1)
    print(
        f"published recipe, torch {torch.__version__}, {args.threads} thread(s): {cfg.data.name} {cfg.data.missing}, "
        f"{sum(q.numel() for q in model.parameters()):,} parameters, batch {t.batch_size}, {n_train} training + "
        f"{n_val} validation samples; {fwd / 1e6:.1f} MFLOP per sample forward, {flops / 1e9:.1f} GFLOP per epoch; "
        f"median of {args.epochs} epochs after one warm-up epoch, a {MM_SIZE}^3 torch.mm timed after each"
        + ("; freed memory retained" if retained else "")
    )
    epochs, mms = [], []
    for epoch in range(1, args.epochs + 2):
        order = epoch_order(epoch, num_present_N, t, cfg.seed)
        start = time.perf_counter()
        run_epoch(model, optimizer, splits.train, order, t, "cpu", lambda *a: None, lambda: None)
        release_freed_memory()  # as multimoe.train.fit does after the steps and after validation
        validate(model, splits.val, t, "cpu")
        release_freed_memory()
        seconds = time.perf_counter() - start
        rate = mm_rate()
        if epoch > 1:  # the first epoch warms up
            epochs.append(seconds)
            mms.append(rate)
        print(f"  epoch {epoch}: {seconds:.2f} s, {flops / seconds / 1e9:.1f} GFLOP/s; mm {rate / 1e9:.1f} GFLOP/s")
    ratios = sorted(flops / s / r for s, r in zip(epochs, mms))
    seconds, mm = statistics.median(epochs), statistics.median(mms)
    peak_mb = peak_rss_mb()  # before the profiled epoch, whose event records the profiler holds in memory
    order = epoch_order(args.epochs + 2, num_present_N, t, cfg.seed)
    profiled, products, top = profiled_epoch(model, optimizer, splits, order, t)
    print(
        f"  one more epoch under torch.profiler ({profiled:.2f} s): {products:.2f} s inside matrix products; "
        f"with nothing else the recipe would run at {flops / products / mm:.3f} of torch.mm. Operators by own time:"
    )
    for name, own, calls in top:
        print(f"    {name:44s} {own:7.3f} s {own / profiled:6.1%} {calls:8d} calls")
    result = {
        "recipe": "published",
        "dataset": cfg.data.name,
        "threads": args.threads,
        "retained_memory": retained,
        "epoch_seconds": round(seconds, 3),
        "samples_per_second": round(n_train / seconds, 1),
        "train_gflops_per_second": round(flops / seconds / 1e9, 2),
        "mm_gflops_per_second": round(mm / 1e9, 2),
        "fraction_of_mm": round(flops / seconds / mm, 3),
        "fraction_of_mm_per_epoch": {"min": round(ratios[0], 3), "max": round(ratios[-1], 3)},
        "matrix_product_seconds": round(products, 3),
        "fraction_of_mm_if_only_products": round(flops / products / mm, 3),
        "peak_rss_mb": round(peak_mb),
    }
    print(
        f"{result['samples_per_second']} samples/s, {result['train_gflops_per_second']} GFLOP/s = "
        f"{result['fraction_of_mm']:.3f} of torch.mm's {result['mm_gflops_per_second']} GFLOP/s (per epoch "
        f"{ratios[0]:.3f} to {ratios[-1]:.3f}); peak resident memory {result['peak_rss_mb']} MB"
    )
    print(json.dumps(result))


# the operators that carry the FLOPs: matrix products, and the fused attention of evaluation (scores and values)
MATRIX_PRODUCTS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::addmm_", "aten::baddbmm",
                   "aten::_scaled_dot_product_flash_attention_for_cpu"}  # fmt: skip


def profiled_epoch(model, optimizer, splits, order, t, top: int = 12) -> tuple[float, float, list]:
    """One epoch (training steps and validation) under torch.profiler: its seconds, the seconds spent inside
    matrix-product operators (the FLOPs' own work), and the ``top`` operators by their own time as (name, seconds,
    calls). The profiler adds a few microseconds to every operator, so this epoch runs slower than the timed ones."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run_epoch(model, optimizer, splits.train, order, t, "cpu", lambda *a: None, lambda: None)
        validate(model, splits.val, t, "cpu")
        seconds = time.perf_counter() - start
    events = prof.key_averages()
    products = sum(e.self_cpu_time_total for e in events if e.key in MATRIX_PRODUCTS) / 1e6
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return seconds, products, [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in ranked]


class Trainer:
    """One model, its optimizer and its training data; ``epoch`` runs one training epoch with multimoe.train's step."""

    def __init__(self, cfg: Config, splits, compiled: bool) -> None:
        self.cfg = cfg
        model_cfg, _ = resolve(cfg.model, splits.schema)
        torch.manual_seed(cfg.seed)
        self.model = build_model(model_cfg, splits.schema)
        if compiled:
            self.model.compile()
        self.optimizer = make_optimizer(self.model, cfg.train)
        self.data = splits.train
        self.num_present_N = self.data.present_NM.sum(dim=1)
        self.epochs_run = 0

    def epoch(self) -> float:
        """Seconds for one training epoch."""
        t = self.cfg.train
        self.model.train()
        self.epochs_run += 1
        order = epoch_order(self.epochs_run, self.num_present_N, t, self.cfg.seed)
        start = time.perf_counter()
        for batch in self.data.batches(t.batch_size, order):
            train_step(self.model, self.optimizer, batch, t)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="config overrides for both models (key=value)")
    p.add_argument("--epochs", type=int, default=7, help="timed epochs per model (median; >= 5)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 2; 1 with --recipe published)")
    p.add_argument(
        "--recipe",
        choices=["compare", "published"],
        default="compare",
        help="compare: Flex-MoE against dense (default); published: make demo's recipe against torch.mm",
    )
    p.add_argument("--compile", action="store_true", help="also time both models under torch.compile")
    p.add_argument("--system-malloc", action="store_true", help="leave glibc's malloc policy as it is")
    args = p.parse_args(argv)
    if args.epochs < 5:
        p.error(f"--epochs {args.epochs}: medians need at least 5 epochs")
    if args.recipe == "published":
        if args.compile:
            p.error("--compile applies to --recipe compare")
        args.threads = args.threads or 1
        return published(args, args.overrides)
    args.threads = args.threads or 2
    torch.set_num_threads(args.threads)
    retained = not args.system_malloc and retain_freed_memory()  # as multimoe.train does on CPU
    base = load_config(PRESET, DEFAULTS + args.overrides)
    splits = prepare(build_table(base.data), base.data, base.seed)
    variants = {
        "flexmoe": (base, False),
        "dense": (load_config(PRESET, DEFAULTS + args.overrides + ["model.ffn=dense"]), False),
    }
    if args.compile:
        variants["flexmoe+compile"] = (base, True)
        variants["dense+compile"] = (variants["dense"][0], True)
    trainers = {name: Trainer(cfg, splits, compiled) for name, (cfg, compiled) in variants.items()}
    n = len(splits.train)
    steps = math.ceil(n / base.train.batch_size)
    schema = splits.schema
    print(
        f"training throughput, torch {torch.__version__}, {args.threads} threads: {base.data.name} "
        f"({schema.num_modalities} modalities, {n} training samples, batch {base.train.batch_size}, {steps} steps per "
        f"epoch); medians of {args.epochs} epochs after one warm-up epoch, models alternating"
        + ("; freed memory retained" if retained else "")
    )
    for name, tr in trainers.items():
        params = sum(q.numel() for q in tr.model.parameters())
        print(f"  {name}: {params:,} parameters")
        tr.epoch()  # warm-up (and compilation)
    times = {name: [] for name in trainers}
    for _ in range(args.epochs):
        for name, tr in trainers.items():
            times[name].append(tr.epoch())
    med = {name: statistics.median(v) for name, v in times.items()}
    rate = {name: n / s for name, s in med.items()}
    print(f"  {'model':<18} {'epoch s':>8} {'samples/s':>10} {'step ms':>8}")
    for name in trainers:
        print(f"  {name:<18} {med[name]:>8.3f} {rate[name]:>10.1f} {1e3 * med[name] / steps:>8.2f}")
    # the same ratio within each round (the two models' epochs run back to back): its spread shows the noise
    rounds = sorted(d / f for f, d in zip(times["flexmoe"], times["dense"]))
    result = {"dataset": base.data.name, "threads": args.threads, "retained_memory": retained}
    result["samples_per_second"] = rate
    result["flexmoe_over_dense"] = round(rate["flexmoe"] / rate["dense"], 3)
    result["flexmoe_over_dense_per_round"] = {"min": round(rounds[0], 3), "max": round(rounds[-1], 3)}
    if args.compile:
        result["compile_gain_flexmoe"] = round(rate["flexmoe+compile"] / rate["flexmoe"], 3)
        result["compile_gain_dense"] = round(rate["dense+compile"] / rate["dense"], 3)
        result["flexmoe_over_dense_compiled"] = round(rate["flexmoe+compile"] / rate["dense+compile"], 3)
    print(
        f"Flex-MoE / dense: {result['flexmoe_over_dense']:.3f} (ratio of the medians; within one round "
        f"{rounds[0]:.3f} to {rounds[-1]:.3f} over {len(rounds)} rounds)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
