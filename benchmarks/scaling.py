"""Scaling on one machine: training samples per second of 1 vs 2 processes (1 thread each, gloo), data parallel and
expert parallel, on a Flex-MoE run (configs/flexmoe-cpu.yaml; default data mfeat, 30 % of modalities missing).

Two processes are spawned once and hold one model per variant, all built from the same weights; in each round every
variant runs ``--steps`` training steps (multimoe.train's step, on the global batches of one epoch order) back to
back, so the machine's drifting load falls on every variant alike. Variants:

- ``1 process``: rank 0 alone trains an unsharded model on the global batch B (rank 1 waits);
- ``DP, global B``: DistributedDataParallel, each rank half of every batch of B (strong scaling, the run
  ``torchrun --nproc-per-node 2 -m multimoe train`` makes: the same weights as 1 process);
- ``DP, global 2B``: each rank a whole batch of B (weak scaling: what a cluster adds per process);
- ``DP without all-reduce``: ``DP, global B`` under DDP's ``no_sync`` (no gradient exchange);
- ``EP, global B``: ``DP, global B`` with ``model.moe.expert_parallel=true`` (experts sharded, tokens exchanged by
  all_to_all; every exchange timed, both directions).

Printed: each variant's median step time and samples/s, the efficiencies (2-process samples/s / (2 x 1-process
samples/s)), and the share of step time spent communicating: for DP 1 - (step without all-reduce / step), for EP
the time inside the all_to_all exchanges / step plus the DP share. The lowest and highest efficiency within one
round show the machine's noise.

    python benchmarks/scaling.py
    python benchmarks/scaling.py --steps 4 --rounds 3 data.name=synthetic

Extra arguments are config overrides. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import multiprocessing
import os
import socket
import statistics
import time
from pathlib import Path

PRESET = Path(__file__).resolve().parents[1] / "configs" / "flexmoe-cpu.yaml"
DEFAULTS = ["data.name=mfeat", "data.missing=mcar:0.3", "train.progress=false", "train.threads=1"]
VARIANTS = ("1 process", "DP, global B", "DP, global 2B", "DP without all-reduce", "EP, global B")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, overrides: list[str], steps: int, rounds: int, queue) -> None:
    """One process: build every variant, time ``rounds`` x ``steps`` steps of each; rank 0 puts the timings."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})  # fmt: skip
    import torch
    import torch.distributed as dist

    from multimoe.data.prepare import prepare
    from multimoe.data.table import build_table
    from multimoe.distributed import Context
    from multimoe.model import build_model, resolve
    from multimoe.registry import load_config
    from multimoe.train import class_weights, epoch_order, make_optimizer, train_step

    torch.set_num_threads(1)
    cfg = load_config(PRESET, DEFAULTS + overrides)
    t = cfg.train
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    splits = prepare(build_table(cfg.data), cfg.data, cfg.seed)
    model_cfg, _ = resolve(cfg.model, splits.schema)
    data = splits.train
    order = epoch_order(1, data.present_NM.sum(dim=1), t, cfg.seed)
    B = t.batch_size
    if len(order) < 2 * B * steps:
        order = order.repeat(math.ceil(2 * B * steps / len(order)))

    a2a_seconds = [0.0]
    exchange = dist.all_to_all_single

    def timed_exchange(*args, **kwargs):  # gloo's all_to_all is synchronous: the call's time is the exchange's
        start = time.perf_counter()
        out = exchange(*args, **kwargs)
        a2a_seconds[0] += time.perf_counter() - start
        return out

    dist.all_to_all_single = timed_exchange  # torch.distributed.nn's differentiable exchange calls it both ways

    def build(ctx: Context, expert_parallel: bool = False):
        torch.manual_seed(cfg.seed)
        model = build_model(model_cfg, splits.schema)
        if expert_parallel:
            ctx.shard_experts(model)
        optimizer = make_optimizer(model, t)
        return ctx, ctx.wrap(model), optimizer

    dp = Context(rank, world)
    ep = Context(rank, world, expert_parallel=True, expert_group=dist.new_group())
    variants = {
        "1 process": (Context(), None, B),
        "DP, global B": (dp, None, B),
        "DP, global 2B": (dp, None, 2 * B),
        "DP without all-reduce": (dp, "no_sync", B),
        "EP, global B": (ep, None, B),
    }
    built = {name: build(ctx, name.startswith("EP")) for name, (ctx, _, _) in variants.items()}
    weight_C = class_weights(t, torch.zeros(0, len(splits.schema.classes)))

    def run(name: str) -> tuple[float, float]:
        """Seconds for ``steps`` steps of variant ``name`` (and those inside all_to_all)."""
        ctx, mode, batch = variants[name]
        _, model, optimizer = built[name]
        tb = dataclasses.replace(t, batch_size=batch)
        model.train()
        dist.barrier()
        a2a_seconds[0] = 0.0
        start = time.perf_counter()
        if name == "1 process" and rank > 0:
            pass  # rank 1 waits at the next barrier
        else:
            with model.no_sync() if mode == "no_sync" else contextlib.nullcontext():
                batches = ctx.batches(data, order[: batch * steps], tb, weight_C)
                for b, share in batches:
                    train_step(model, optimizer, b, tb, share=share)
        seconds = time.perf_counter() - start
        dist.barrier()
        return seconds, a2a_seconds[0]

    for name in variants:  # warm-up
        run(name)
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name in variants:
            times[name].append(run(name))
    if rank == 0:
        info = {"dataset": cfg.data.name, "train": len(data), "batch": B, "modalities": splits.schema.num_modalities,
                "experts": model_cfg.moe.num_experts}  # fmt: skip
        queue.put((info, times))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    p.add_argument("--steps", type=int, default=8, help="training steps per variant and round")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (medians)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.rounds < 3:
        p.error(f"--steps {args.steps} --rounds {args.rounds}: at least 1 step and 3 rounds (medians)")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    rank_args = (port, args.overrides, args.steps, args.rounds, queue)
    procs = [ctx.Process(target=_rank, args=(r, 2, *rank_args)) for r in (0, 1)]
    for proc in procs:
        proc.start()
    try:
        info, times = queue.get(timeout=3600)
    finally:
        for proc in procs:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
    B, steps = info["batch"], args.steps
    step = {name: statistics.median(s for s, _ in v) / steps for name, v in times.items()}
    samples = {name: (2 * B if name == "DP, global 2B" else B) / step[name] for name in VARIANTS}
    a2a = statistics.median(a / s for s, a in times["EP, global B"]) if times["EP, global B"] else 0.0
    dp_comm = max(0.0, 1 - step["DP without all-reduce"] / step["DP, global B"])
    scaled = ("DP, global B", "DP, global 2B", "EP, global B")
    eff = {name: samples[name] / (2 * samples["1 process"]) for name in scaled}
    per_round = {
        name: sorted(
            (B if name != "DP, global 2B" else 2 * B) / s / (2 * B / one)
            for (s, _), (one, _) in zip(times[name], times["1 process"])
        )  # fmt: skip
        for name in eff
    }
    print(
        f"scaling on {os.cpu_count()} cores, 1 thread per process, gloo: {info['dataset']} ({info['modalities']} "
        f"modalities, {info['train']} training samples, {info['experts']} experts, B={B}); medians of {args.rounds} "
        f"rounds of {steps} steps per variant, variants alternating"
    )
    print(f"  {'variant':<24} {'step ms':>8} {'samples/s':>10} {'efficiency':>10}")
    for name in VARIANTS:
        shown = f"{eff[name]:.3f}" if name in eff else ""
        print(f"  {name:<24} {1e3 * step[name]:>8.1f} {samples[name]:>10.1f} {shown:>10}")
    print(f"  communication share of the step: DP {dp_comm:.3f}; EP all_to_all {a2a:.3f} (+ DP's all-reduce)")
    result = {**info, "steps": steps, "rounds": args.rounds, "cores": os.cpu_count(),
              "samples_per_second": {k: round(v, 2) for k, v in samples.items()},
              "efficiency": {k: round(v, 3) for k, v in eff.items()},
              "efficiency_per_round": {k: [round(v[0], 3), round(v[-1], 3)] for k, v in per_round.items()},
              "communication_share": {"dp_all_reduce": round(dp_comm, 3), "ep_all_to_all": round(a2a, 3)}}  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
