"""Expert parallelism: the experts of every MoE layer sharded across the ranks of a process group
(``model.moe.expert_parallel=true`` under torchrun), beside the one-process engine in ``multimoe/moe.py``.

Shape letters: the legend in ``multimoe/__init__.py``; here E counts the experts this rank holds (the engine's E, the
rows of its weight shards), and the per-expert counts over all experts are host lists.

Rank r holds a contiguous block of experts, ``expert_ranges``: E // N each, the first E % N ranks one more. Each rank
routes its own tokens with the replicated router, then (``expert_parallel_ffn``):

1. sorts its (token, slot) assignments by expert (``plan_dispatch``, as the engine does), so the rows for each rank
   are one contiguous block;
2. exchanges counts: one ``all_to_all_single`` of the rows per expert, so that each rank learns how many rows of
   each of its experts every rank sends;
3. exchanges tokens: one ``all_to_all_single`` with uneven splits (differentiable: its backward is the reverse
   exchange of the gradients);
4. runs its experts on the rows it received through the same engine (``expert_ffn``, one slot per row, gate 1);
5. sends the outputs back by the reverse exchange and combines each token's k outputs with its gate weights where
   the token lives, so gradients reach the gates, the tokens and the expert shards through both exchanges.

The forward equals the one-process MoE on the union of the ranks' tokens (a capacity applies per rank to its own
tokens, as under data parallelism). Each expert's gradient is the sum over every rank's tokens, the same as the
one-process gradient of the summed per-rank losses; distributed.py weights the losses so that this sum is the
global batch mean. Expert shards are left out of DDP (nothing to average: each lives on one rank).
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn

from multimoe.dispatch import expert_capacity, plan_dispatch
from multimoe.moe import MoE, expert_ffn

# torch 2.13 marks the differentiable exchange deprecated in favour of a private module (_functional_collectives);
# the public one stays until a public successor exists
warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_to_all_single is deprecated", FutureWarning)

EXPERT_WEIGHTS = ("w1_EDH", "b1_EH", "w2_EHD", "b2_ED")  # the parameters of an MoE layer stacked by expert


def expert_ranges(num_experts: int, world: int) -> list[tuple[int, int]]:
    """[start, end) of the experts each rank holds: contiguous blocks, sizes differing by at most one."""
    base, extra = divmod(num_experts, world)
    bounds = [0]
    for r in range(world):
        bounds.append(bounds[-1] + base + (r < extra))
    return list(zip(bounds[:-1], bounds[1:]))


def expert_parallel_ffn(
    x_TD: Tensor,
    ids_TK: Tensor,
    weights_TK: Tensor,
    w1_EDH: Tensor,
    b1_EH: Tensor,
    w2_EHD: Tensor,
    b2_ED: Tensor,
    capacity_factor: float = 0.0,
    *,
    ranges: list[tuple[int, int]],
    rank: int,
    group: dist.ProcessGroup | None = None,
) -> tuple[Tensor, Tensor]:
    """``expert_ffn`` with the experts sharded over ``group``: this rank holds experts ``ranges[rank]`` (its weight
    shards), ``ids_TK`` are global expert ids. Returns this rank's tokens' outputs and their rows per expert (all
    experts), as ``expert_ffn`` does. Every rank of the group must call it (a collective), with or without tokens."""
    T, K = ids_TK.shape
    D = x_TD.shape[1]
    world, num_experts = len(ranges), ranges[-1][1]
    local = w1_EDH.shape[0]
    plan = plan_dispatch(ids_TK, num_experts, expert_capacity(capacity_factor, T, K, num_experts))
    counts = plan.counts  # rows per expert, all experts, sorted by expert = grouped by destination rank
    send = [sum(counts[s:e]) for s, e in ranges]
    # 1. counts first: each rank receives, from every rank, the rows per expert for its own experts
    counts_E = plan.counts_E.to(x_TD.device)
    recv_counts = counts_E.new_empty(world * local)
    dist.all_to_all_single(recv_counts, counts_E, [local] * world, [e - s for s, e in ranges], group=group)
    recv = recv_counts.view(world, local).sum(dim=1).tolist()
    # 2. tokens, sorted by expert, to the rank holding their expert
    send_RD = x_TD.index_select(0, plan.token_R.to(x_TD.device))
    recv_RD = dist_fn.all_to_all_single(send_RD.new_empty(sum(recv), D), send_RD, recv, send, group=group)
    # 3. the local experts through the engine: one slot per received row, gate 1 (the gates apply at the source)
    local_ids = torch.arange(local, device=x_TD.device).repeat(world)
    expert_R1 = local_ids.repeat_interleave(recv_counts).unsqueeze(1)
    ones_R1 = recv_RD.new_ones(expert_R1.shape)
    y_RD, _ = expert_ffn(recv_RD, expert_R1, ones_R1, w1_EDH, b1_EH, w2_EHD, b2_ED)
    # 4. outputs back to the tokens' ranks, in the order they were sent
    back_RD = dist_fn.all_to_all_single(y_RD.new_empty(sum(send), D), y_RD, send, recv, group=group)
    # 5. combine: out_t = sum_k gate_tk * y[row of (t, k)]
    row_TK = plan.rows_of_assignments(torch.arange(plan.rows, device=plan.order_R.device)).to(x_TD.device)
    y_TKD = back_RD.index_select(0, row_TK.view(-1)).view(T, K, D)
    mixing_TK = weights_TK if plan.keep_TK is None else weights_TK * plan.keep_TK.to(weights_TK.device)
    out_TD = torch.bmm(mixing_TK.unsqueeze(1).to(y_TKD.dtype), y_TKD).squeeze(1)
    return out_TD, plan.counts_E


def moe_layers(model: nn.Module) -> list[tuple[str, MoE]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MoE)]


class ExpertShards:
    """The experts of every MoE layer of one model sharded over ``group``: which rows of each stacked parameter this
    rank holds, and the full <-> local conversions that checkpoints need (rank 0 writes and reads the full model)."""

    def __init__(self, model: nn.Module, rank: int, world: int, group: dist.ProcessGroup | None = None) -> None:
        self.rank, self.world, self.group = rank, world, group
        self.ranges: dict[str, list[tuple[int, int]]] = {}  # parameter name -> every rank's [start, end)
        for name, moe in moe_layers(model):
            if moe.num_experts < world:
                raise ValueError(f"{name}: {moe.num_experts} experts cannot be sharded over {world} ranks")
            ranges = expert_ranges(moe.num_experts, world)
            for w in EXPERT_WEIGHTS:
                self.ranges[f"{name}.{w}" if name else w] = ranges

    def shard(self, model: nn.Module, compiled: bool = False) -> None:
        """Keep this rank's experts only (in place) and route every MoE layer through the exchange. ``compiled``:
        the model runs under torch.compile, which must leave the exchange eager, as it leaves the engine."""
        for name, moe in moe_layers(model):
            ranges = self.ranges[f"{name}.w1_EDH" if name else "w1_EDH"]
            start, end = ranges[self.rank]
            for w in EXPERT_WEIGHTS:
                full = getattr(moe, w)
                setattr(moe, w, nn.Parameter(full.detach()[start:end].clone(), requires_grad=full.requires_grad))
            engine = functools.partial(expert_parallel_ffn, ranges=ranges, rank=self.rank, group=self.group)
            moe.engine = torch.compiler.disable(engine) if compiled else engine

    @property
    def names(self) -> list[str]:
        """The sharded parameters' names (left out of DDP)."""
        return list(self.ranges)

    def is_expert(self, name: str) -> bool:
        return name in self.ranges

    # -- full <-> local ---------------------------------------------------------------------------------------------

    def full_shape(self, name: str, local: Tensor) -> tuple[int, ...]:
        return (self.ranges[name][-1][1], *local.shape[1:])

    def local_rows(self, name: str, full: Tensor) -> Tensor:
        start, end = self.ranges[name][self.rank]
        return full[start:end]

    def gather_rows(self, name: str, local: Tensor) -> Tensor:
        """The full tensor from every rank's rows (a collective: all_gather of the shards padded to the largest)."""
        sizes = [e - s for s, e in self.ranges[name]]
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[: local.shape[0]] = local.detach()
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=self.group)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    def full_model_state(self, model: nn.Module) -> dict[str, Tensor]:
        """The model's state dict with every expert stacked whole (a collective)."""
        state = model.state_dict()
        return {k: self.gather_rows(k, v) if self.is_expert(k) else v for k, v in state.items()}

    def template(self, model: nn.Module) -> dict[str, Tensor]:
        """The full model's state dict shapes (uninitialised expert tensors, no communication): what a checkpoint of
        the full model is checked against before it is read."""
        state = model.state_dict()
        return {
            k: torch.empty(self.full_shape(k, v), dtype=v.dtype) if self.is_expert(k) else v for k, v in state.items()
        }

    def local_model_state(self, full: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: self.local_rows(k, v) if self.is_expert(k) else v for k, v in full.items()}

    def _optimizer_names(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
        """The parameter name of each index of ``optimizer.state_dict()`` (its params, group by group)."""
        names = {id(p): n for n, p in model.named_parameters()}
        return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> dict:
        """The optimizer's state dict with the moments of every expert stacked whole (a collective)."""
        state = optimizer.state_dict()
        names = self._optimizer_names(model, optimizer)
        out = {}
        for idx, values in sorted(state["state"].items()):
            name = names[idx]
            out[idx] = {
                k: self.gather_rows(name, v) if self.is_expert(name) and torch.is_tensor(v) and v.dim() else v
                for k, v in values.items()
            }
        return {"state": out, "param_groups": state["param_groups"]}

    def local_optimizer_state(self, full: dict, optimizer: torch.optim.Optimizer, model: nn.Module) -> dict:
        names = self._optimizer_names(model, optimizer)
        out = {}
        for idx, values in full["state"].items():
            name = names[int(idx)]
            out[idx] = {
                k: self.local_rows(name, v) if self.is_expert(name) and torch.is_tensor(v) and v.dim() else v
                for k, v in values.items()
            }
        return {"state": out, "param_groups": full["param_groups"]}
