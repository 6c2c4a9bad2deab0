"""Processes for the distributed tests: ``run_ranks`` runs a function in several spawned processes joined by a gloo
process group (one thread each, a free port, a deadline after which every process is killed: a test never hangs),
and the functions the ranks run. This module imports little, so that each spawned process starts fast."""

from __future__ import annotations

import datetime
import multiprocessing
import os
import socket
import sys
import time
import traceback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(rank: int, world: int, port: int) -> dict[str, str]:
    """The variables torchrun sets for each process."""
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port)}  # fmt: skip


def join(rank: int, world: int, port: int, timeout: float = 30.0) -> None:
    """In a spawned process: torchrun's environment, one thread, the gloo process group."""
    import torch
    import torch.distributed as dist

    os.environ.update(torchrun_env(rank, world, port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))


def _rank_main(fn, *args) -> None:
    """A spawned process: ``fn(*args)``, then exit at once with 0 (returned) or 1 (raised, traceback printed). The
    ranks end with ``os._exit`` because an interpreter shutdown with a live gloo group (a broken one included) can
    abort in the group's C++ destructors ("terminate called without an active exception", exit -6) after ``fn`` has
    done everything the test asks of it."""
    code = 0
    try:
        fn(*args)
    except BaseException:  # noqa: BLE001 -- any failure of the rank's function fails the test through the exit code
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_ranks(fn, *args, world: int = 2, timeout: float = 90.0) -> list[int]:
    """``fn(rank, world, port, *args)`` in ``world`` spawned processes; their exit codes (0: returned normally, 1:
    raised, another code: the function exited with it). Each process still running at ``timeout`` seconds is killed
    and fails the test."""
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(fn, rank, world, port, *args)) for rank in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [rank for rank, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} still running after {timeout} s"
    return [p.exitcode for p in procs]


# ---------------------------------------------------------------------------------------------------------------
# What the ranks run


def dead_rank(rank: int, world: int, port: int) -> None:
    """Rank 1 dies without a word; rank 0's next collective must fail with a DistributedError naming it, within
    the timeout."""
    import pytest

    from multimoe.distributed import Context
    from multimoe.errors import DistributedError

    join(rank, world, port, timeout=5)
    ctx = Context(rank, world)
    ctx.sum_over_ranks([1.0])  # both ranks are there
    if rank == 1:
        os._exit(3)
    started = time.monotonic()
    with pytest.raises(DistributedError, match=r"rank 0 of 2: a collective failed, another rank"), ctx.failures():
        for _ in range(100):
            ctx.sum_over_ranks([1.0])
    assert time.monotonic() - started < 5 + 3, "the timeout bounds the wait"


def _split(n: int, rank: int, world: int) -> slice:
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def expert_parallel_layer(rank: int, world: int, port: int) -> None:
    """The exchange against the one-process engine on the same tokens and weights, each rank holding a slice of the
    tokens and a block of the experts: outputs, and gradients of tokens, gates and expert weights (1e-5)."""
    import torch

    from multimoe.expert_parallel import expert_parallel_ffn, expert_ranges
    from multimoe.moe import expert_ffn

    join(rank, world, port)
    T, K, E, D, H = 14, 2, 5, 8, 12
    ranges = expert_ranges(E, world)  # 2 ranks: experts 0-2 and 3-4
    skewed = torch.stack([torch.zeros(T, dtype=torch.long), torch.arange(T) % 3 + 1], 1)  # expert 4 gets nothing
    cases = {
        "skewed, an expert without tokens": (skewed, _split(T, rank, world), 0.0),
        "every token on rank 0's experts": (
            torch.stack([torch.arange(T) % 3, (torch.arange(T) + 1) % 3], 1),
            _split(T, rank, world),
            0.0,
        ),  # fmt: skip
        "rank 1 without tokens": (skewed, slice(0, T) if rank == 0 else slice(T, T), 0.0),
        "a capacity, per rank": (skewed, _split(T, rank, world), 1.0),
    }
    for name, (ids_TK, mine, capacity) in cases.items():
        g = torch.Generator().manual_seed(0)
        x_TD, gates_TK = torch.randn(T, D, generator=g), torch.rand(T, K, generator=g).softmax(1)
        weights = [torch.randn(E, D, H, generator=g), torch.randn(E, H, generator=g), torch.randn(E, H, D, generator=g),
                   torch.randn(E, D, generator=g)]  # fmt: skip
        up_TD = torch.randn(T, D, generator=g)  # the gradient arriving at the layer's output
        # one process: every token in one call (under a capacity: each rank's tokens in their own call, as DDP runs)
        ref = [t.clone().requires_grad_() for t in (x_TD, gates_TK, *weights)]
        calls = [slice(0, T)] if not capacity else [_split(T, r, world) for r in range(world)]
        if capacity and name != "a capacity, per rank":
            raise AssertionError(name)
        outs = [expert_ffn(ref[0][s], ids_TK[s], ref[1][s], *ref[2:], capacity_factor=capacity)[0] for s in calls]
        ref_out = torch.cat(outs)
        (ref_out * up_TD).sum().backward()
        start, end = ranges[rank]
        mine_ = [x_TD[mine].clone().requires_grad_(), gates_TK[mine].clone().requires_grad_()]
        shards = [w[start:end].clone().requires_grad_() for w in weights]
        out, counts_E = expert_parallel_ffn(*mine_[:1], ids_TK[mine], mine_[1], *shards, capacity_factor=capacity,
                                            ranges=ranges, rank=rank)  # fmt: skip
        (out * up_TD[mine]).sum().backward()
        close = dict(rtol=0, atol=1e-5)
        torch.testing.assert_close(out, ref_out[mine], **close, msg=f"{name}: outputs")
        torch.testing.assert_close(mine_[0].grad, ref[0].grad[mine], **close, msg=f"{name}: token gradients")
        torch.testing.assert_close(mine_[1].grad, ref[1].grad[mine], **close, msg=f"{name}: gate gradients")
        for shard, full in zip(shards, ref[2:]):
            torch.testing.assert_close(shard.grad, full.grad[start:end], **close, msg=f"{name}: expert gradients")
        assert counts_E.shape == (E,) and int(counts_E.sum()) <= (mine.stop - mine.start) * K


def expert_parallel_model(rank: int, world: int, port: int, out_dir: str) -> None:
    """An MoE layer sharded by ExpertShards (router replicated) against the whole layer; the full <-> local state of
    model and optimizer; then a tiny training run with model.moe.expert_parallel=true (rank 0 writes it)."""
    import torch
    import torch.distributed as dist
    import yaml

    from multimoe.config import GateLossConfig
    from multimoe.expert_parallel import ExpertShards
    from multimoe.moe import MoE, TokenInfo
    from multimoe.registry import load_config
    from multimoe.routers import SoftmaxTopK
    from multimoe.train import train

    join(rank, world, port)
    torch.manual_seed(0)
    whole = MoE(8, 12, SoftmaxTopK(8, 5, 2), GateLossConfig(supervision="none"))
    layer = MoE(8, 12, SoftmaxTopK(8, 5, 2), GateLossConfig(supervision="none"))
    layer.load_state_dict(whole.state_dict())
    shards = ExpertShards(layer, rank, world)
    shards.shard(layer)
    assert layer.w1_EDH.shape[0] == (3 if rank == 0 else 2)
    g = torch.Generator().manual_seed(1)
    x_TD, up_TD = torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g)
    info = TokenInfo(torch.zeros(20, dtype=torch.long), torch.zeros(20, dtype=torch.long), 1)
    (whole(x_TD, info).out_TD * up_TD).sum().backward()
    mine = _split(20, rank, world)
    info_mine = TokenInfo(info.modality_T[mine], info.combo_T[mine], 1)
    out = layer(x_TD[mine], info_mine).out_TD
    torch.testing.assert_close(out, whole(x_TD, info).out_TD[mine], rtol=0, atol=1e-5)
    (out * up_TD[mine]).sum().backward()
    router_grad = layer.router.weight_GJD.grad.clone()
    dist.all_reduce(router_grad)  # each rank's tokens' share; DDP sums them in training
    torch.testing.assert_close(router_grad, whole.router.weight_GJD.grad, rtol=0, atol=1e-5)
    full = shards.full_model_state(layer)
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(full[k], v, rtol=0, atol=0, msg=k)
    assert {k: v.shape for k, v in shards.template(layer).items()} == {k: v.shape for k, v in full.items()}
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    optimizer.step()
    state = shards.full_optimizer_state(optimizer, layer)
    names = [n for n, _ in layer.named_parameters()]
    assert state["state"][names.index("w1_EDH")]["exp_avg"].shape == (5, 8, 12)
    local = shards.local_optimizer_state(state, optimizer, layer)
    torch.testing.assert_close(local["state"][names.index("w1_EDH")]["exp_avg"],
                               optimizer.state_dict()["state"][names.index("w1_EDH")]["exp_avg"])  # fmt: skip
    with open(f"{out_dir}/config.yaml") as f:  # the one-process run's, written by the test
        config = yaml.safe_load(f)
    result = train(load_config(None, {**config, "out_dir": f"{out_dir}/ep", "model": {**config["model"],
                   "moe": {**config["model"]["moe"], "expert_parallel": True}}}))  # fmt: skip
    assert result.world_size == world and result.rank == rank


class Killed(Exception):
    """Stands for a kill of every process in the middle of an epoch."""


def killed_then_resumed(rank: int, world: int, port: int, out_dir: str) -> None:
    """A 2-process run stopped in epoch 2's validation (after epoch 1's state was written) on every rank, then
    resumed with ``train.resume`` as ``multimoe train --resume`` does, in the same processes."""
    import torch.distributed as dist

    import multimoe.train as train_module
    from multimoe.registry import load_config
    from multimoe.train import train

    join(rank, world, port)
    calls, validate = [0], train_module.validate

    def validate_then_die(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise Killed
        return validate(*args, **kwargs)

    train_module.validate = validate_then_die
    try:
        train(load_config(f"{out_dir}/config.yaml", [f"out_dir={out_dir}/dp"]))
        raise AssertionError("the run should have been stopped")
    except Killed:
        pass
    train_module.validate = validate
    dist.barrier()
    (run,) = os.listdir(f"{out_dir}/dp")
    path = f"{out_dir}/dp/{run}"
    result = train(load_config(f"{path}/config.yaml", [f"train.resume={path}"]))
    assert result.world_size == world and result.run_dir.name == run
