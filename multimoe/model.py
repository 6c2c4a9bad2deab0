"""The multimodal MoE model: encoders -> missing fill -> fusion layers (attention + MoE feed-forward) -> head.

Shape letters: the legend in ``multimoe/__init__.py`` (B batch, M modalities, P tokens per modality, L = M*P tokens
per sample, D width, T = B*L tokens, C classes).

Flex-MoE (METHODS.md §1): every modality becomes P tokens; absent modalities are filled (the bank); tokens of all
modalities are concatenated, a learned positional embedding (zero init) is added, then pre-LN transformer layers:
x = x + attention(LN(x)) (the residual the public code lost) and x = x + MoE(LN(x)), the MoE running once over all
tokens. Head: mean of each modality's tokens, concatenated, one linear layer.

The public code's attention block, behind two switches (configs/flexmoe-code.yaml): ``attn_residual=false`` gives its
a + dropout(a) with a = attention(LN(x)) (models.py TransformerEncoderLayer.forward: the input x is lost), and
``attn_out_dropout=true`` its second dropout on the attention's output projection (models.py Attention, proj_drop).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multimoe.batch import Batch, num_combinations
from multimoe.config import ConfigError, ModelConfig
from multimoe.data.dataset import DataSchema
from multimoe.data.kinds import ENCODER_KIND, KindShape
from multimoe.dropout import Dropout, drop
from multimoe.gate_losses import combination_targets
from multimoe.moe import MoE, MoEOutput, TokenInfo, exclude_from_compile
from multimoe.registry import ARCHS, ENCODERS, FILLS, ROUTERS


def encoder_name(cfg: ModelConfig, kind: str) -> str:
    """The registry name of the encoder of a modality of ``kind``: ``model.encoder.kind`` for tables and embeddings,
    ``model.encoder.series`` / ``.image`` / ``.text`` for the others."""
    reads = ENCODER_KIND[kind]
    return cfg.encoder.kind if reads == "table" else getattr(cfg.encoder, reads)


def build_encoder(cfg: ModelConfig, shape: KindShape) -> nn.Module:
    """A modality's encoder to ``cfg.tokens`` tokens of width ``cfg.dim``: table encoders take the feature count,
    the other kinds' encoders the input shape (``KindShape``)."""
    reads = ENCODER_KIND[shape.kind]
    name = encoder_name(cfg, shape.kind)
    key = "model.encoder.kind" if reads == "table" else f"model.encoder.{reads}"
    ENCODERS.check(name, reads, key=key)
    first = shape.shape[0] if reads == "table" else shape
    return ENCODERS.build(name, first, cfg.tokens, cfg.dim, cfg.encoder)


class Attention(nn.Module):
    """Multi-head self-attention over all modality tokens (query and key/value maps without bias, as published);
    ``out_dropout`` also drops the output projection's result (the public code's proj_drop)."""

    def __init__(self, dim: int, heads: int, dropout: float, out_dropout: bool = False) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.out_drop = Dropout(dropout if out_dropout else 0.0)

    def forward(self, x_BLD: Tensor) -> Tensor:
        B, L, D = x_BLD.shape
        h = self.heads
        q = self.q(x_BLD).view(B, L, h, D // h).transpose(1, 2)
        k, v = self.kv(x_BLD).view(B, L, 2, h, D // h).permute(2, 0, 3, 1, 4).unbind(0)
        if self.training and self.dropout > 0:  # dropout on the attention probabilities, with the fast mask draw
            probs = (q @ k.transpose(-2, -1) * (D // h) ** -0.5).softmax(dim=-1)
            out = drop(probs, self.dropout) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.out_drop(self.proj(out.transpose(1, 2).reshape(B, L, D)))


class DenseFFN(nn.Module):
    """The dense feed-forward of the ``dense`` method: Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x_TD: Tensor, info: TokenInfo) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x_TD)))


class FusionLayer(nn.Module):
    """Pre-LN transformer layer with residuals on both branches (``attn_residual=False``: the public code's
    attention block, a + dropout(a)); the feed-forward is a MoE or dense."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dropout: float,
        ffn: nn.Module,
        attn_residual: bool = True,
        attn_out_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout, attn_out_dropout)
        self.ffn = ffn
        self.drop1, self.drop2 = Dropout(dropout), Dropout(dropout)
        self.attn_residual = attn_residual

    def forward(self, x_BLD: Tensor, info: TokenInfo) -> tuple[Tensor, MoEOutput | None]:
        a_BLD = self.attn(self.norm1(x_BLD))
        x_BLD = (x_BLD if self.attn_residual else a_BLD) + self.drop1(a_BLD)
        h_TD = self.norm2(x_BLD).reshape(-1, x_BLD.shape[-1])
        out = self.ffn(h_TD, info)
        moe_out = out if isinstance(out, MoEOutput) else None
        y_TD = out.out_TD if moe_out is not None else out
        return x_BLD + self.drop2(y_TD.view_as(x_BLD)), moe_out


@dataclass
class ModelOutput:
    logits_BC: Tensor
    aux_loss: Tensor  # router losses summed over MoE layers (unweighted)
    moe: list[MoEOutput]  # per MoE layer: routing, tokens per expert
    info: TokenInfo | None  # modality and combination of every token (None without fusion tokens)
    member_logits_KBC: Tensor | None = None  # an ensemble's members' own logits, each trained on its own loss


class MultimodalMoE(nn.Module):
    def __init__(self, cfg: ModelConfig, schema: DataSchema) -> None:
        super().__init__()
        self.cfg, self.schema = cfg, schema
        M, P, D = schema.num_modalities, cfg.tokens, cfg.dim
        self.encoders = nn.ModuleDict({m: build_encoder(cfg, s) for m, s in zip(schema.modalities, schema.inputs)})
        self.fill = FILLS.build(cfg.fill, M, P, D)
        self.pos_LD = nn.Parameter(torch.zeros(M * P, D))
        self.layers = nn.ModuleList(
            [
                FusionLayer(D, cfg.heads, cfg.dropout, self._build_ffn(cfg, M), cfg.attn_residual, cfg.attn_out_dropout)
                for _ in range(cfg.layers)
            ]
        )
        self.head = nn.Linear(M * D, schema.num_classes)
        self.register_buffer("modality_L", torch.arange(M).repeat_interleave(P), persistent=False)

    @staticmethod
    def _build_ffn(cfg: ModelConfig, M: int) -> nn.Module:
        if cfg.ffn == "dense":
            return DenseFFN(cfg.dim, cfg.dense_hidden)
        r, gate, E = cfg.moe.router, cfg.moe.gate_loss, cfg.moe.num_experts
        targets_S = None
        if gate.supervision == "combination":
            targets_S = combination_targets(num_combinations(M), E, gate.combination_map)
        router = ROUTERS.build(r.kind, cfg.dim, E, r.top_k, r.layout, M)
        return MoE(cfg.dim, cfg.moe.hidden, router, gate, targets_S, cfg.moe.capacity_factor, cfg.moe.init)

    def forward(self, batch: Batch) -> ModelOutput:
        B = batch.present_BM.shape[0]  # not len(batch): an int, which would fix the batch size of an export
        M, P, D = self.schema.num_modalities, self.cfg.tokens, self.cfg.dim
        enc_BMPD = torch.stack(
            [self.encoders[m](batch.inputs[m], batch.cell_missing[m]) for m in self.schema.modalities], dim=1
        )
        tokens_BMPD = torch.where(
            batch.present_BM[:, :, None, None], enc_BMPD, self.fill(batch.combo_B, batch.present_BM)
        )
        x_BLD = tokens_BMPD.reshape(B, M * P, D) + self.pos_LD
        info = TokenInfo(self.modality_L.repeat(B), batch.combo_B.repeat_interleave(M * P), M)
        aux = x_BLD.new_zeros(())
        moe_outs = []
        for layer in self.layers:
            x_BLD, moe_out = layer(x_BLD, info)
            if moe_out is not None:
                aux = aux + moe_out.aux_loss
                moe_outs.append(moe_out)
        pooled_BMD = x_BLD.view(B, M, P, D).mean(dim=2)
        return ModelOutput(self.head(pooled_BMD.reshape(B, M * D)), aux, moe_outs, info)


class LateFusion(nn.Module):
    """Late fusion: one classifier per modality (its encoder, a linear head on all its tokens); the class
    probabilities are averaged over the modalities a sample has. Trained end to end on the averaged prediction.

    The head reads the tokens concatenated, not their mean: with the patch-linear encoder (one linear map shared by
    all chunks) the mean of the tokens is a linear map of the mean chunk, which throws away which feature is which."""

    def __init__(self, cfg: ModelConfig, schema: DataSchema) -> None:
        super().__init__()
        self.cfg, self.schema = cfg, schema
        self.encoders = nn.ModuleDict({m: build_encoder(cfg, s) for m, s in zip(schema.modalities, schema.inputs)})
        self.heads = nn.ModuleDict({m: nn.Linear(cfg.tokens * cfg.dim, schema.num_classes) for m in schema.modalities})
        self.drop = Dropout(cfg.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        logits_BMC = torch.stack(
            [
                self.heads[m](self.drop(self.encoders[m](batch.inputs[m], batch.cell_missing[m]).flatten(1)))
                for m in self.schema.modalities
            ],
            dim=1,
        )
        present_BM1 = batch.present_BM[:, :, None].to(logits_BMC.dtype)
        probs_BC = (logits_BMC.softmax(dim=-1) * present_BM1).sum(dim=1) / present_BM1.sum(dim=1)
        return ModelOutput(probs_BC.clamp(min=1e-12).log(), logits_BMC.new_zeros(()), [], None)


class Ensemble(nn.Module):
    """``model.members`` copies of one architecture, each initialised from its own draws, trained side by side on the
    same batches (a deep ensemble in one model; TabM, Gorishniy et al. 2024, call it an ensemble trained in
    parallel). Each member is trained on its own cross-entropy, so its gradient is the one it would get alone on the
    batch (``multimoe.train.train_step``); the model predicts the mean of the members' class probabilities, whose
    logarithm is its logits, so evaluation, early stopping, ``predict`` and export read the ensemble as one model.
    Router losses are averaged over the members, and the MoE layers of every member are listed in member order."""

    def __init__(self, cfg: ModelConfig, schema: DataSchema, member: type[nn.Module]) -> None:
        super().__init__()
        self.cfg, self.schema = cfg, schema
        one = dataclasses.replace(cfg, members=1)
        self.members = nn.ModuleList([member(one, schema) for _ in range(cfg.members)])

    def forward(self, batch: Batch) -> ModelOutput:
        outs = [m(batch) for m in self.members]
        logits_KBC = torch.stack([o.logits_BC for o in outs])
        mean_logp_BC = torch.logsumexp(logits_KBC.log_softmax(dim=-1), dim=0) - math.log(len(outs))
        aux = torch.stack([o.aux_loss for o in outs]).mean()
        moe = [layer for o in outs for layer in o.moe]
        return ModelOutput(mean_logp_BC, aux, moe, outs[0].info, logits_KBC)


def resolve(cfg: ModelConfig, schema: DataSchema) -> tuple[ModelConfig, list[str]]:
    """The model config as it runs on ``schema``, and notes on what was adjusted: the one place where the expert
    count and ``top_k``'s range are decided.

    Flex-MoE maps combination c to expert c, so with combination supervision and the identity map it needs one
    expert per combination (2^M - 1); its public code crashes otherwise. We then raise the expert count, as the
    public code requires, to 2^M - 1 (or to 2^M with ``moe.grow_experts=power_of_two``, the count the public code
    was run with for the reproduction) and say so. Resolving a resolved config changes nothing (resumed runs read
    theirs)."""
    cfg = copy.deepcopy(cfg)
    notes = []
    moe = cfg.moe
    if ARCHS.check(cfg.arch).kind != "neural" or cfg.ffn != "moe":
        return cfg, notes
    combos = num_combinations(schema.num_modalities)
    identity = moe.gate_loss.supervision == "combination" and moe.gate_loss.combination_map == "identity"
    if identity and moe.num_experts < combos:
        grown = combos if moe.grow_experts == "combinations" else combos + 1
        how = "one per combination" if grown == combos else f"2^{schema.num_modalities}, as the public code was run"
        notes.append(
            f"{schema.num_modalities} modalities give {combos} combinations > {moe.num_experts} experts: "
            f"using {grown} experts ({how}; Flex-MoE's identity map needs one per combination)"
        )
        moe.num_experts = grown
    if not 1 <= moe.router.top_k <= moe.num_experts:
        pool = "per modality pool" if moe.router.layout == "disjoint" else "in all"
        raise ConfigError(
            f"model.moe.router.top_k={moe.router.top_k} must be between 1 and model.moe.num_experts="
            f"{moe.num_experts} (experts {pool})"
        )
    return cfg, notes


def build_model(cfg: ModelConfig, schema: DataSchema) -> nn.Module:
    """A neural model for ``schema``; ``cfg`` should already be resolved (see ``resolve``)."""
    entry = ARCHS.check(cfg.arch)
    if entry.kind != "neural":
        neural = ", ".join(n for n in ARCHS if ARCHS.check(n).kind == "neural")
        raise ConfigError(f"model.arch={cfg.arch!r} is not a neural model; neural archs: {neural}")
    if cfg.members > 1:
        return Ensemble(cfg, schema, entry.load())
    return entry.load()(cfg, schema)


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile`` the model in place (parameter names and checkpoints stay those of the plain model); the
    MoE engine stays eager."""
    exclude_from_compile(model)
    model.compile()
    return model
