"""End to end: training samples per second of Flex-MoE against the ``dense`` method with equal active parameters.

Both models are built from configs/flexmoe.yaml (D=128, 16 tokens per modality, 16 experts, top-4, expert hidden
256, batch 8, fused Adam); ``dense`` replaces the MoE with one feed-forward of hidden top_k x 256. Same data (by
default ``synthetic`` with 4 modalities, 30 % of modalities missing), same run: whole training epochs (forward,
backward, optimizer, as ``multimoe.train`` runs them) alternate between the models after a warm-up epoch each,
and each model's median epoch time gives its samples per second. ``--compile`` also times both models under
``torch.compile`` (``train.compile=true``), warm-up epochs (which include compilation) excluded.

    python benchmarks/train_throughput.py
    python benchmarks/train_throughput.py --compile --epochs 5 data.name=landsat

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
from multimoe.data.prepare import prepare
from multimoe.data.table import build_table
from multimoe.model import build_model, resolve
from multimoe.process import retain_freed_memory
from multimoe.registry import load_config
from multimoe.train import epoch_order, make_optimizer, train_step

PRESET = Path(__file__).resolve().parents[1] / "configs" / "flexmoe.yaml"
DEFAULTS = ["data.name=synthetic", "data.synthetic.modalities=4", "data.missing=mcar:0.3", "train.progress=false"]


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
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also time both models under torch.compile")
    p.add_argument("--system-malloc", action="store_true", help="leave glibc's malloc policy as it is")
    args = p.parse_args(argv)
    if args.epochs < 5:
        p.error(f"--epochs {args.epochs}: medians need at least 5 epochs")
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
