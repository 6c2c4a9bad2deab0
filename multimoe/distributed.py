"""Training in several processes: data parallel with DistributedDataParallel, experts optionally sharded across the
processes (``model.moe.expert_parallel``, multimoe/expert_parallel.py). Launched by torchrun:

    torchrun --nproc-per-node N -m multimoe train CONFIG key=value ...
    torchrun --nnodes 2 --node-rank R --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m multimoe ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; with WORLD_SIZE > 1 ``init`` joins the process group: gloo on CPU,
NCCL on CUDA (each process on the GPU of its local rank), every collective bounded by ``train.dist_timeout``
seconds, so a rank that dies or stops answering ends the others with a DistributedError instead of a hang (torchrun
also stops the other processes as soon as one exits with an error, and each process dies with its torchrun).
Without torchrun (WORLD_SIZE unset or 1) the context is ``SINGLE`` and every method below is the one-process
behaviour, unchanged.

What each rank computes:

- Sharding. Every rank builds the same data and the same epoch order (``epoch_order``, the curriculum included).
  ``train.batch_size`` is the global batch: each batch of that order is cut into N contiguous chunks whose sizes
  differ by at most one, rank r taking chunk r (``shard``). A rank left without rows in the last batch (fewer rows
  than ranks) runs one step on a stand-in row with weight 0, so that every rank takes part in every exchange.
- Averaging. Rank r weights its task loss (a mean over its chunk) by its share of the global batch's cross-entropy
  denominator (its rows, or their class weights with ``train.class_weights=code``), and DDP sums the gradients (a
  sum hook in place of its mean): the gradient is the one-process batch mean's, uneven chunks included. On CPU, N
  processes give the weights one process gives, up to the order of float additions.
- Gate losses are computed per rank, on its own tokens, and averaged over the ranks that have rows. That is not the
  one-process value: a batch's cv² of expert load, or Flex-MoE's per-combination balance groups, are not means of
  the same statistics over parts of the batch (a rank's chunk may hold no token of some combination). This is what
  data-parallel MoE training does in general; exchanging the gate statistics every step would cost one more
  all-reduce per layer and step. With ``train.gate_loss_weight=0`` the weights are the one-process ones.
- Randomness. Rank 0 keeps the one-process random stream; rank r > 0 is reseeded at every epoch from (seed, epoch,
  rank). Dropout, the noisy gate's noise and modality dropout therefore draw different numbers than one process
  does (the run is equal in distribution, not bitwise); a resumed run continues exactly with the same N.
- Metrics. The epoch's losses are summed over the ranks; validation and test are sharded like the training batches
  and the predictions gathered, so every rank computes the same metrics and takes the same early-stopping decision.
- Files. Rank 0 alone creates the run folder and writes logs, checkpoints and the summary; it also reads the
  checkpoints (resume, the best epoch) and broadcasts them, so the other ranks need no shared filesystem.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from multimoe.config import ConfigError, TrainConfig
from multimoe.data.dataset import MultimodalData
from multimoe.device import setup
from multimoe.errors import DistributedError
from multimoe.evaluate import Predictions, evaluate, metrics_from_predictions, predict
from multimoe.expert_parallel import ExpertShards
from multimoe.guard import grad_norm
from multimoe.process import die_with_parent


def launched() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside it."""
    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0"))


@dataclass(frozen=True)
class Shard:
    """A rank's part of an order cut into global batches: its chunk of each batch, in step order. Only the last
    global batch can leave a rank without rows (``short``); batches of ``batch_size`` over the concatenated
    ``rows`` are the chunks again (how evaluation reads them)."""

    chunks: list[Tensor]  # the rank's rows (indices into the data) at each global step
    batches: list[Tensor]  # each global batch's rows
    batch_size: int  # the rank's chunk of a full global batch

    @property
    def rows(self) -> Tensor:
        return torch.cat(self.chunks)

    @property
    def short(self) -> bool:
        return bool(self.chunks) and self.chunks[-1].numel() == 0

    def ranks_with_rows(self, step: int, world: int) -> int:
        return min(self.batches[step].numel(), world)


def _chunk(size: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) of rank ``rank``'s chunk of a batch of ``size`` rows."""
    base, extra = divmod(size, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def shard(order: Tensor, batch_size: int, rank: int, world: int) -> Shard:
    """Rank ``rank``'s chunk of every global batch of ``batch_size`` rows of ``order`` (see Shard)."""
    if batch_size < world:
        raise ConfigError(f"a batch of {batch_size} rows cannot be shared by {world} processes (one row each at least)")
    batches = [order[begin : begin + batch_size] for begin in range(0, order.shape[0], batch_size)]
    chunks = [b[slice(*_chunk(b.numel(), rank, world))] for b in batches]
    start, end = _chunk(batch_size, rank, world)
    return Shard(chunks, batches, end - start)


@dataclass(frozen=True)
class Share:
    """A rank's weights in one step's loss: ``task`` on its task loss (its share of the global batch), ``gate`` on
    its router loss (1 / ranks with rows), and the gradient norm over all ranks (``norm(model, clip)``)."""

    task: float
    gate: float
    norm: Callable[[nn.Module, float], Tensor]


def _sum_gradients(state, bucket):  # no annotations: DDP checks them, and this module's are strings
    """DDP communication hook: the gradients summed over the ranks (DDP's default divides the sum by N; the losses
    are weighted by each rank's share of the batch instead, which stays exact for uneven chunks)."""
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


class _StateView:
    """Stands for a model or an optimizer in the checkpoint functions (which call only ``state_dict`` and
    ``load_state_dict``): the full state rank 0 writes, or the one it reads, before it is broadcast."""

    def __init__(self, state: dict | None) -> None:
        self.state, self.loaded = state, False

    def state_dict(self) -> dict:
        return self.state

    def load_state_dict(self, state: dict) -> None:
        self.state, self.loaded = state, True


@dataclass(eq=False)
class Context:
    """Where this process stands: its rank among ``world`` processes, its device, the expert shards (expert
    parallel), and the collectives training needs. ``SINGLE``: one process, every method the plain behaviour."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    experts: ExpertShards | None = None
    expert_parallel: bool = False  # asked for; ``experts`` is set once the model is sharded
    expert_group: Any = None  # the process group of the expert exchanges (apart from DDP's all-reduces)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    # -- the model ----------------------------------------------------------------------------------------------------

    def shard_experts(self, model: nn.Module, compiled: bool = False) -> None:
        """Expert parallel: keep this rank's experts of every MoE layer (call before building the optimizer)."""
        if not (self.active and self.expert_parallel):
            return
        try:
            self.experts = ExpertShards(model, self.rank, self.world, self.expert_group)
        except ValueError as e:
            raise ConfigError(f"model.moe.expert_parallel: {e}; use fewer processes or more experts") from None
        self.experts.shard(model, compiled)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module training steps run: DDP (gradients summed, expert shards left out) or ``model`` itself."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if self.experts is not None:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, self.experts.names)
        ids = [self.device] if self.device.type == "cuda" else None
        params = inspect.signature(DistributedDataParallel).parameters  # the buffers never change: no sync per step
        no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False}
        ddp = DistributedDataParallel(model, device_ids=ids, **no_sync)
        ddp.register_comm_hook(None, _sum_gradients)
        return ddp

    def grad_norm(self, model: nn.Module, clip: float = 0.0) -> Tensor:
        """``guard.grad_norm`` over the whole model: with sharded experts, their squared norms summed over ranks
        (every rank then clips by the same factor and the replicated weights stay equal)."""
        if self.experts is None:
            return grad_norm(model, clip)
        named = [(n, p) for n, p in _unwrap(model).named_parameters() if p.grad is not None]
        shared = [p.grad for n, p in named if not self.experts.is_expert(n)]
        local = [p.grad for n, p in named if self.experts.is_expert(n)]
        local_sq = torch.nn.utils.get_total_norm(local).square() if local else torch.zeros((), device=self.device)
        dist.all_reduce(local_sq)
        shared_n = torch.nn.utils.get_total_norm(shared) if shared else torch.zeros((), device=self.device)
        total = (shared_n.square() + local_sq).sqrt()
        if clip > 0:
            torch.nn.utils.clip_grads_with_norm_([p for _, p in named], clip, total)
        return total

    # -- training -----------------------------------------------------------------------------------------------------

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Ranks > 0 draw their own random numbers, the same again when a run is resumed at ``epoch``."""
        if self.rank > 0:
            torch.manual_seed((seed * 1_000_003 + epoch) * 1009 + self.rank)

    def batches(self, data: MultimodalData, order: Tensor, t: TrainConfig, weight_C: Tensor | None = None
                ) -> Iterator[tuple[object, Share | None]]:  # fmt: skip
        """The training batches of one epoch in ``order`` with each step's Share (None in one process).
        ``weight_C``: the cross-entropy's class weights (None: plain mean)."""
        if not self.active:
            for batch in data.batches(t.batch_size, order):
                yield batch, None
            return
        part = shard(order, t.batch_size, self.rank, self.world)
        weight_C = torch.ones(len(data.schema.classes)) if weight_C is None else weight_C.cpu()
        weight_N = weight_C.double()[data.labels_N]
        for step, (rows, whole) in enumerate(zip(part.chunks, part.batches)):
            if rows.numel() == 0:  # a stand-in row, weight 0: this rank still takes part in the step's exchanges
                yield data.batch(whole[:1]), Share(0.0, 0.0, self.grad_norm)
                continue
            task = float(weight_N[rows].sum() / weight_N[whole].sum())
            yield data.batch(rows), Share(task, 1.0 / part.ranks_with_rows(step, self.world), self.grad_norm)

    def sum_over_ranks(self, values: list[float]) -> list[float]:
        if not self.active:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.tolist()

    # -- evaluation ---------------------------------------------------------------------------------------------------

    def evaluate(self, model: nn.Module, data: MultimodalData, batch_size: int, device: torch.device,
                 on_output: Callable | None = None, breakdown: bool = True) -> dict:  # fmt: skip
        """``evaluate``: in several processes each rank predicts its chunks of the batches and every rank computes
        the metrics from all predictions (identical on every rank)."""
        if not self.active:
            return evaluate(model, data, batch_size, device, on_output, breakdown)
        if len(data) < self.world:
            raise ConfigError(f"a split of {len(data)} rows cannot be shared by {self.world} processes")
        part = shard(torch.arange(len(data)), batch_size, self.rank, self.world)
        rows_N = part.rows.numpy()
        pred = predict(model, data.subset(rows_N), part.batch_size, device, on_output)
        if part.short and self.experts is not None:  # take part in the last batch's expert exchange
            _idle_forward(model, data, device)
        parts = self.all_gather((rows_N, pred.probs_NC, pred.loss * len(rows_N), pred.routing))
        rows_N = np.concatenate([p[0] for p in parts])
        probs_NC = np.concatenate([p[1] for p in parts])[np.argsort(rows_N, kind="stable")]
        routing = [
            {k: np.round(np.sum([np.asarray(p[3][i][k]) for p in parts], axis=0), 4).tolist() for k in layer}
            for i, layer in enumerate(parts[0][3])
        ]
        whole = Predictions(probs_NC, data.labels_N.numpy(), data.combo_N.numpy(),
                            sum(p[2] for p in parts) / len(data), routing)  # fmt: skip
        return metrics_from_predictions(whole, data.schema.modalities, breakdown)

    # -- files: rank 0 writes and reads, the others receive --------------------------------------------------------

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0, its result (or its error) on every rank."""
        if not self.active:
            return fn()
        result = None
        if self.main:
            try:
                result = ("ok", fn())
            except Exception as e:  # every rank raises it, not only rank 0
                result = ("error", e)
        status, value = self.broadcast(result)
        if status == "error":
            raise value
        return value

    def full(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[Any, Any]:
        """What rank 0 saves: the model and optimizer themselves, or with sharded experts views of the whole ones
        (a collective: call it on every rank)."""
        if self.experts is None:
            return model, optimizer
        m = _StateView(self.experts.full_model_state(model))
        o = None if optimizer is None else _StateView(self.experts.full_optimizer_state(optimizer, model))
        return m, o

    def restore(self, load: Callable[[Any, Any], Any], model: nn.Module,
                optimizer: torch.optim.Optimizer | None = None) -> Any:  # fmt: skip
        """``load(model, optimizer)`` (a checkpoint function that reads weights into them) on rank 0, its weights
        and optimizer state then loaded on every rank (each keeping its own experts); returns ``load``'s result."""
        if not self.active:
            return load(model, optimizer)

        def read():
            template = model.state_dict() if self.experts is None else self.experts.template(model)
            m, o = _StateView(template), _StateView(None)
            result = load(m, None if optimizer is None else o)
            return (m.state if m.loaded else None), (o.state if o.loaded else None), result

        model_state, optimizer_state, result = self.on_main(read)
        if model_state is not None:
            model.load_state_dict(model_state if self.experts is None else self.experts.local_model_state(model_state))
        if optimizer_state is not None:
            if self.experts is not None:
                optimizer_state = self.experts.local_optimizer_state(optimizer_state, optimizer, model)
            optimizer.load_state_dict(optimizer_state)
        return result

    # -- collectives --------------------------------------------------------------------------------------------------

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order."""
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """Turn a failed collective (another rank died, or stopped answering for ``train.dist_timeout`` s) into a
        DistributedError that names this rank."""
        try:
            yield
        except (RuntimeError, dist.DistError) as e:
            text = str(e)
            if not self.active or not any(w in text for w in ("gloo", "NCCL", "Timed out", "Connection", "timeout")):
                raise
            first = text.strip().splitlines()[0][:300]
            raise DistributedError(
                f"rank {self.rank} of {self.world}: a collective failed, another rank has failed or stopped answering "
                f"({first}); see the other ranks' output for the cause"
            ) from e


SINGLE = Context()


def init(t: TrainConfig, expert_parallel: bool = False) -> Context:
    """Join torchrun's process group when there is one (WORLD_SIZE > 1), else the one-process context; sets the
    device and threads either way (``device.setup``)."""
    rank, world, local_rank = launched()
    if world <= 1:
        return Context(device=setup(t.device, t.threads))
    for key in ("batch_size", "eval_batch_size"):
        if getattr(t, key) < world:
            raise ConfigError(f"train.{key}={getattr(t, key)} must be at least the number of processes ({world})")
    die_with_parent()  # torchrun starts each process in its own session: a killed torchrun must not leave them training
    spec = f"cuda:{local_rank}" if t.device.startswith("cuda") else t.device  # one GPU per process
    device = setup(spec, t.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=t.dist_timeout)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise DistributedError(f"process group of {dist.get_world_size()} ranks, but WORLD_SIZE={world}")
    group = dist.new_group(timeout=timeout) if expert_parallel else None
    return Context(rank, world, device, expert_parallel=expert_parallel, expert_group=group)


def shutdown() -> None:
    """Leave the process group (end of a torchrun process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


@torch.no_grad()
def _idle_forward(model: nn.Module, data: MultimodalData, device: torch.device) -> None:
    was = model.training
    model.eval()
    model(data.batch(torch.arange(1)).to(device))
    model.train(was)
