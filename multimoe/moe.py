"""The sparse MoE feed-forward (the engine): one call for all tokens of all modalities, token-choice dispatch,
dropless unless a capacity factor is set.

Shape letters: the legend in ``multimoe/__init__.py`` (T tokens, D width, H expert hidden width, E experts, K
experts per token, Q rows of the padded layout).

Dispatch (``multimoe.dispatch``) sorts the (token, slot) assignments by expert and lays the rows out padded: every
expert to a common width chosen per call, plus one block per expert past it. Compute (``_ExpertFFN``, one autograd
Function with a hand-written backward): gather the tokens into those rows, run every expert (Linear -> GELU ->
Linear) as one batched product (``baddbmm``, bias inside) plus one product per overflowing expert, gather each
token's k outputs back and combine them with the gate weights in one batched product. The backward runs the same
products transposed, sums each token's k input-gradient rows by the same gather (no scatter anywhere), frees each
intermediate as soon as it is used (peak memory close to a dense FFN's) and never indexes a stacked weight under
autograd (which would build a full-size gradient per expert). On 2 CPU threads a batched product runs each expert's
GEMM whole on one thread, at a dense GEMM's speed; it measured fastest in every case of benchmarks/moe_layer.py
against a grouped-mm and a per-expert-loop path (benchmarks/reference_paths.py, kept there for comparison).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from multimoe.config import GateLossConfig
from multimoe.dispatch import Padded, expert_capacity, padded_width, plan_dispatch
from multimoe.gate_losses import gate_loss
from multimoe.routers import Router, Routing


@dataclass
class TokenInfo:
    """What travels with the tokens so routers and losses can use modality and combination information."""

    modality_T: Tensor  # modality id of each token
    combo_T: Tensor  # combination index of each token's sample
    num_modalities: int


@dataclass
class MoEOutput:
    out_TD: Tensor
    routing: Routing
    tokens_per_expert_E: Tensor  # (token, slot) assignments each expert processed (after the capacity, if any)
    aux_loss: Tensor
    info: TokenInfo | None = None  # the routed tokens, when not the model's (a subset, or a retriever's own tokens)


def _combine(y_QD: Tensor, row_TK: Tensor, gates_TK: Tensor, keep_TK: Tensor | None) -> tuple[Tensor, Tensor]:
    """out_t = Σ_k gate_tk * y[row_tk] as one batched product over tokens; also the gathered y_TKD."""
    T, K = row_TK.shape
    y_TKD = y_QD.index_select(0, row_TK.view(-1)).view(T, K, y_QD.shape[1])
    mixing_TK = gates_TK if keep_TK is None else gates_TK * keep_TK
    return torch.bmm(mixing_TK.unsqueeze(1).to(y_TKD.dtype), y_TKD).squeeze(1), y_TKD


def _sum_rows(g_QD: Tensor, row_TK: Tensor, keep_TK: Tensor | None) -> Tensor:
    """Per token: the sum of the rows of its kept (token, slot) assignments. A gather and a sum over the K slots, not an
    ``index_add`` over the rows: the same values, ~3x faster on CPU (its scatter runs serially)."""
    T, K = row_TK.shape
    g_TKD = g_QD.index_select(0, row_TK.view(-1)).view(T, K, g_QD.shape[1])
    if keep_TK is not None:
        g_TKD = g_TKD * keep_TK.unsqueeze(2).to(g_TKD.dtype)
    return g_TKD.sum(dim=1)


def _gates_grad(y_TKD: Tensor, grad_TD: Tensor, gates_TK: Tensor, keep_TK: Tensor | None) -> Tensor:
    # a multiply-sum, not bmm: T tiny (K x D) @ (D x 1) products cost ~4x more as a batched matmul on CPU
    grad_TK = (y_TKD * grad_TD.unsqueeze(1)).sum(dim=2).to(gates_TK.dtype)
    return grad_TK if keep_TK is None else grad_TK * keep_TK


def _padded_linear(a_QI: Tensor, w_EIO: Tensor, b_EO: Tensor, pad: Padded) -> Tensor:
    """Row -> a_r @ w[e] + b[e] on the padded layout: one batched product for the first E * width rows, one
    per overflowing expert after them."""
    E, W = w_EIO.shape[0], pad.width
    out_QO = a_QI.new_empty(a_QI.shape[0], w_EIO.shape[2])
    bulk_out = out_QO[: E * W].view(E, W, out_QO.shape[1])
    torch.baddbmm(b_EO.unsqueeze(1), a_QI[: E * W].view(E, W, a_QI.shape[1]), w_EIO, out=bulk_out)
    for e, s, t in pad.overflow:
        torch.addmm(b_EO[e], a_QI[s:t], w_EIO[e], out=out_QO[s:t])
    return out_QO


def _padded_input_grad(g_QO: Tensor, w_EIO: Tensor, pad: Padded) -> Tensor:
    """Row -> g_r @ w[e]^T on the padded layout."""
    E, W = w_EIO.shape[0], pad.width
    w_EOI = w_EIO.transpose(1, 2)
    out_QI = g_QO.new_empty(g_QO.shape[0], w_EIO.shape[1])
    bulk_out = out_QI[: E * W].view(E, W, out_QI.shape[1])
    torch.bmm(g_QO[: E * W].view(E, W, g_QO.shape[1]), w_EOI, out=bulk_out)
    for e, s, t in pad.overflow:
        torch.mm(g_QO[s:t], w_EOI[e], out=out_QI[s:t])
    return out_QI


def _padded_weight_grads(a_QI: Tensor, g_QO: Tensor, pad: Padded) -> tuple[Tensor, Tensor]:
    """Per expert Σ_r a_r^T g_r and Σ_r g_r over its rows on the padded layout (padding rows have g = 0)."""
    E, W = pad.num_experts, pad.width
    bulk_g = g_QO[: E * W].view(E, W, g_QO.shape[1])
    dw_EIO = torch.bmm(a_QI[: E * W].view(E, W, a_QI.shape[1]).transpose(1, 2), bulk_g)
    db_EO = bulk_g.sum(1)
    for e, s, t in pad.overflow:
        dw_EIO[e].addmm_(a_QI[s:t].t(), g_QO[s:t])
        db_EO[e] += g_QO[s:t].sum(0)
    return dw_EIO, db_EO


class _ExpertFFN(torch.autograd.Function):
    """out_t = Σ_k gate_tk * (GELU(x_t W1[e] + b1[e]) W2[e] + b2[e]), e = expert of (t, k), on the padded layout:
    each product is one batched matmul (one parallel region on CPU, one kernel on CUDA) with the bias inside it,
    plus one matmul per overflowing expert. Padding rows read token 0 with a zero gate: their outputs are never
    gathered and their rows of every backward product are exactly zero (for finite values), so they add nothing to
    any gradient. The intermediates live on ``ctx`` rather than in ``save_for_backward`` so that the backward can
    free each one as soon as it is used."""

    @staticmethod
    def forward(ctx, x_TD, gates_TK, w1_EDH, b1_EH, w2_EHD, b2_ED, pad: Padded, keep_TK: Tensor | None):
        xs_QD = x_TD.index_select(0, pad.source_Q)
        pre_QH = _padded_linear(xs_QD, w1_EDH, b1_EH, pad)
        h_QH = F.gelu(pre_QH)
        y_QD = _padded_linear(h_QH, w2_EHD, b2_ED, pad)
        out_TD, y_TKD = _combine(y_QD, pad.row_TK, gates_TK, keep_TK)
        del y_QD
        ctx.save_for_backward(x_TD, gates_TK, w1_EDH, w2_EHD)
        ctx.xs_QD, ctx.pre_QH, ctx.h_QH, ctx.y_TKD = xs_QD, pre_QH, h_QH, y_TKD
        ctx.pad, ctx.keep_TK = pad, keep_TK
        return out_TD

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_TD):
        x_TD, gates_TK, w1_EDH, w2_EHD = ctx.saved_tensors
        pad = ctx.pad
        grad_TD = grad_TD.contiguous()
        grad_gates_TK = _gates_grad(ctx.y_TKD, grad_TD, gates_TK, ctx.keep_TK) if ctx.needs_input_grad[1] else None
        ctx.y_TKD = None
        gates_A1 = torch.cat([gates_TK.t().reshape(-1, 1), gates_TK.new_zeros(1, 1)]).to(grad_TD.dtype)
        dy_QD = grad_TD.index_select(0, pad.source_Q).mul_(gates_A1.index_select(0, pad.gate_Q))
        dw2_EHD, db2_ED = _padded_weight_grads(ctx.h_QH, dy_QD, pad)
        ctx.h_QH = None
        dpre_QH = _padded_input_grad(dy_QD, w2_EHD, pad)
        del dy_QD
        torch.ops.aten.gelu_backward.grad_input(dpre_QH, ctx.pre_QH, grad_input=dpre_QH)  # in place
        ctx.pre_QH = None
        grad_x_TD = None
        if ctx.needs_input_grad[0]:
            dxs_QD = _padded_input_grad(dpre_QH, w1_EDH, pad)
            grad_x_TD = _sum_rows(dxs_QD, pad.row_TK, ctx.keep_TK)
            del dxs_QD
        dw1_EDH, db1_EH = _padded_weight_grads(ctx.xs_QD, dpre_QH, pad)
        ctx.xs_QD = None
        return grad_x_TD, grad_gates_TK, dw1_EDH, db1_EH, dw2_EHD, db2_ED, None, None


def expert_ffn(
    x_TD: Tensor,
    ids_TK: Tensor,
    weights_TK: Tensor,
    w1_EDH: Tensor,
    b1_EH: Tensor,
    w2_EHD: Tensor,
    b2_ED: Tensor,
    capacity_factor: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Σ_k weight_k * expert_{id_k}(x) per token (experts: Linear -> GELU -> Linear); also rows per expert.

    ``capacity_factor`` > 0 caps each expert at ceil(factor * T * K / E) (token, slot) assignments, dropping the
    rest (they contribute nothing; the kept weights are not renormalised)."""
    T, K = ids_TK.shape
    E = w1_EDH.shape[0]
    plan = plan_dispatch(ids_TK, E, expert_capacity(capacity_factor, T, K, E))
    pad = plan.padded(padded_width(plan.counts))
    out_TD = _ExpertFFN.apply(x_TD, weights_TK, w1_EDH, b1_EH, w2_EHD, b2_ED, pad, plan.keep_TK)
    return out_TD, plan.counts_E


def dense_expert_ffn(
    x_TD: Tensor,
    ids_TK: Tensor,
    weights_TK: Tensor,
    w1_EDH: Tensor,
    b1_EH: Tensor,
    w2_EHD: Tensor,
    b2_ED: Tensor,
    capacity_factor: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """``expert_ffn``'s outputs computed densely, for export (ONNX) and as an independent check of the engine: every
    expert runs on every token (E / K times the engine's FLOPs), each token's K outputs are gathered by its expert ids
    and combined with its gate weights as the engine combines them. Under a capacity, the assignments each expert
    drops are the engine's: past ``capacity`` in slot-major, then token, order. No numpy, no data-dependent shape:
    ``torch.export`` traces it with a symbolic number of tokens. Forward only (evaluation)."""
    T, K = ids_TK.shape
    E, D = w1_EDH.shape[0], w1_EDH.shape[1]
    h_ETH = F.gelu(torch.baddbmm(b1_EH.unsqueeze(1), x_TD.unsqueeze(0).expand(E, T, D), w1_EDH))
    y_ETD = torch.baddbmm(b2_ED.unsqueeze(1), h_ETH, w2_EHD)
    row_TK = ids_TK * T + torch.arange(T, device=ids_TK.device).unsqueeze(1)  # row of (expert, token) in y_ETD
    y_TKD = y_ETD.reshape(E * T, -1).index_select(0, row_TK.reshape(-1)).view(T, K, -1)
    onehot_AE = F.one_hot(ids_TK.t().reshape(-1), E)  # assignments a = k * T + t, slot-major like the engine
    counts_E = onehot_AE.sum(dim=0)
    mixing_TK = weights_TK
    if capacity_factor > 0:
        tokens = torch.ones_like(ids_TK[:, 0], dtype=torch.float64).sum()  # T as a tensor (symbolic under export)
        capacity = torch.ceil(capacity_factor * tokens * K / E).clamp(min=1)
        rank_A = ((onehot_AE.cumsum(dim=0) - onehot_AE) * onehot_AE).sum(dim=1)  # earlier assignments, same expert
        keep_TK = (rank_A < capacity).view(K, T).t()
        mixing_TK = weights_TK * keep_TK.to(weights_TK.dtype)
        counts_E = torch.minimum(counts_E, capacity.to(counts_E.dtype))
    out_TD = torch.bmm(mixing_TK.unsqueeze(1).to(y_TKD.dtype), y_TKD).squeeze(1)
    return out_TD, counts_E


class MoE(nn.Module):
    """Sparse MoE feed-forward with a pluggable router; returns the output, the routing and the router loss."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        router: Router,
        gate: GateLossConfig,
        targets_S: Tensor | None = None,
        capacity_factor: float = 0.0,
        init: str = "torch",
    ) -> None:
        super().__init__()
        self.router = router
        self.engine = expert_ffn  # torch.compile: runs eagerly (see exclude_from_compile)
        self.supervision, self.exclude = gate.supervision, gate.balance_exclude
        self.capacity_factor = capacity_factor
        num_experts = router.num_experts
        self.register_buffer("targets_S", targets_S, persistent=False)
        pool_ME = None
        if router.layout == "disjoint":  # modality m may use experts [m * pool, (m + 1) * pool)
            pool_ME = (torch.arange(num_experts) // router.pool)[None, :] == torch.arange(router.groups)[:, None]
        self.register_buffer("pool_ME", pool_ME, persistent=False)
        self.w1_EDH = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.b1_EH = nn.Parameter(torch.empty(num_experts, hidden))
        self.w2_EHD = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.b2_ED = nn.Parameter(torch.empty(num_experts, dim))
        for w, b, fan_in in ((self.w1_EDH, self.b1_EH, dim), (self.w2_EHD, self.b2_ED, hidden)):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation, per expert
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)
        if _fastmoe_init(init):
            self._init_as_fastmoe(dim, hidden)

    @torch.no_grad()
    def _init_as_fastmoe(self, dim: int, hidden: int) -> None:
        """The public code's initialisation (model.moe.init=fastmoe), from the same random draws rescaled, so that
        every other parameter of the model starts as with the default: fastmoe's FMoELinear.reset_parameters runs
        kaiming_uniform(a=sqrt(5)) on a whole (E, out, in) weight, whose fan-in torch takes as out * in, so
        U(+-1/sqrt(D*H)) for both expert layers, and zero biases; NoisyGate.reset_parameters runs it on the (D, E)
        gate and noise matrices, fan-in E: U(+-1/sqrt(E)) where the router drew U(+-1/sqrt(D))."""
        for w, fan_in in ((self.w1_EDH, dim), (self.w2_EHD, hidden)):
            w.mul_(math.sqrt(fan_in / (dim * hidden)))
        self.b1_EH.zero_()
        self.b2_ED.zero_()
        for w in self.router.parameters():
            w.mul_(math.sqrt(dim / self.router.pool))

    @property
    def num_experts(self) -> int:
        return self.w1_EDH.shape[0]

    def forward(self, x_TD: Tensor, info: TokenInfo) -> MoEOutput:
        routing = self.router(x_TD, info.modality_T)
        out_TD, counts_E = self.engine(
            x_TD,
            routing.ids_TK,
            routing.weights_TK,
            self.w1_EDH,
            self.b1_EH,
            self.w2_EHD,
            self.b2_ED,
            capacity_factor=self.capacity_factor,
        )
        aux = gate_loss(
            routing,
            info.combo_T,
            info.modality_T,
            info.num_modalities,
            self.supervision,
            self.exclude,
            self.targets_S,
            self.pool_ME,
        )
        return MoEOutput(out_TD, routing, counts_E, aux)


def _fastmoe_init(init: str) -> bool:
    if init not in ("torch", "fastmoe"):
        raise ValueError(f"unknown MoE init {init!r}; choose torch or fastmoe")
    return init == "fastmoe"


def exclude_from_compile(model: nn.Module) -> None:
    """Run every MoE engine of ``model`` eagerly under ``torch.compile`` (its dispatch is data-dependent, and the
    grouped products have no float32 trace). Applied when compiling, not at import, so that importing the package
    does not load torch._dynamo."""
    for module in model.modules():
        if isinstance(module, MoE):
            module.engine = torch.compiler.disable(expert_ffn)
