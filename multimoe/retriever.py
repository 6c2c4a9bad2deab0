"""MoE-Retriever (Flex-MoE's authors; AAAI-25 GenAI4Health workshop): a missing modality retrieved from a supporting
group of training samples by a sparse MoE, on the harness's parts (PEERS.md; facts from its public code,
UNITES-Lab/moe-retriever at e99132b).

Shape letters: the legend in ``multimoe/__init__.py`` (B batch, M modalities, P tokens per modality, L = M*P, D
width, E experts, T tokens; here C for the missing cells being retrieved, S for the rows of a supporting group and
G for the 2|O| inputs of one retrieval, the group's rows then the sample's own observed modalities).

- Fusion (its ``FusionLayer``, as run: dense feed-forward): per-modality encoders (patch-linear), a learned positional
  embedding, one pre-LN transformer layer with the feed-forward Linear(D, 2D) -> GELU -> dropout -> Linear(2D, D),
  head Linear(M*D, C) on the per-modality token means. Its attention block loses the input (x = a + dropout(a)):
  the residual is restored here, as for Flex-MoE.
- Retrieval, for a sample missing modality m that observes the set O: a supporting group of |O| training samples
  that observe m and all of O (drawn without replacement; the training split lives in the model,
  ``multimoe.pools``). Their encoded m (intra-modal inputs) and the sample's own encoded O (inter-modal inputs),
  2|O| inputs of P tokens, form one sequence: one pre-LN transformer layer whose attention runs across all the
  inputs' tokens and whose feed-forward is a sparse MoE (noisy top-4, experts Linear(D, 2D) -> GELU ->
  Linear(2D, D), the harness's engine) routed only among m's 8 experts and the 4 shared ones (8M + 4 in all; the
  others get -inf). The retrieved tokens are (1 - w) * mean over the intra-modal outputs + w * mean over the
  inter-modal ones (w = ``inter_weight``, 0.5), and replace the missing modality's tokens.
- Its code discards that output: the retrieved embedding is the same 50/50 mean of the retriever's *inputs*, so the
  retriever gets no gradient (``output=input_mean`` reproduces it); its attention runs within each input's tokens,
  not across inputs; its retriever block has the lost attention residual and no feed-forward residual. Here the
  paper's design is trained end to end (``output=retrieved``, the default), attention runs across the inputs, and
  the block has both residuals.
- Loss: cross-entropy + 0.01 * the retriever router's load balance (cv^2 of importance and load, Shazeer 2017, over
  the experts each modality may use, per modality). Its code computes that loss in the gate and never adds it (the
  gate loss it adds is the dense fusion's, zero); ``train.gate_loss_weight=0`` turns it off.
- Warm-up: for the first ``warmup_epochs`` (5) epochs missing modalities are zeros and the retriever is off; the
  model counts the training samples it has seen (a buffer, so resumed runs and checkpoints know where they are).
  Its code does not validate during warm-up; the harness validates every epoch (warm-up epochs use zeros there too).
- Support pools: its code draws from the training split in training, training + validation for validation and
  training + test for testing (test inputs used transductively); here always from the training split only. When
  fewer than |O| training samples observe m and all of O its code crashes (``random.sample``):
  ``short_support=replace`` draws the qualifying ones with replacement, ``relax`` takes those that observe m and
  most of O (``multimoe.pools.draw_support``). The model counts both cases (``support_counts``).
- Recipe (its scripts): Adam 1e-4, batch 16, 20 epochs, the first 5 warm-up, best validation accuracy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from multimoe.batch import Batch
from multimoe.config import GateLossConfig, ModelConfig
from multimoe.data.dataset import DataSchema
from multimoe.gate_losses import balance_loss
from multimoe.i2moe import DropoutFFN
from multimoe.model import FusionLayer, ModelOutput
from multimoe.moe import MoE, MoEOutput, TokenInfo
from multimoe.pools import TrainingPool, draw_support, eval_generator
from multimoe.registry import ENCODERS
from multimoe.routers import NoisyTopK, Routing


class RestrictedNoisyTopK(NoisyTopK):
    """Noisy top-k gating among the experts a token's target modality may use: its own ``candidates`` and the
    ``shared`` ones (experts [m * candidates, (m + 1) * candidates) and the last ``shared``)."""

    def __init__(self, dim: int, candidates: int, shared: int, top_k: int, num_modalities: int) -> None:
        E = candidates * num_modalities + shared
        if top_k >= candidates + shared:
            raise ValueError(
                f"retriever top_k={top_k} must be below the {candidates + shared} experts one modality uses"
            )
        super().__init__(dim, E, top_k)
        experts_E = torch.arange(E)
        own_ME = (experts_E // candidates)[None, :] == torch.arange(num_modalities)[:, None]
        self.register_buffer("allowed_ME", own_ME | (experts_E >= candidates * num_modalities), persistent=False)

    def _select(self, scores_GTJ: Tensor, modality_T: Tensor) -> Tensor:
        return super()._select(scores_GTJ, modality_T).masked_fill(~self.allowed_ME[modality_T], float("-inf"))


def empty_routing(like: Tensor, num_experts: int, top_k: int, num_modalities: int) -> MoEOutput:
    """A layer output with no routed token (no cell retrieved in the batch)."""
    ids = torch.zeros(0, top_k, dtype=torch.long, device=like.device)
    routing = Routing(like.new_zeros(0, top_k), ids, like.new_zeros(0, num_experts), like.new_zeros(0, num_experts))
    empty = ids[:, 0]
    info = TokenInfo(empty, empty, num_modalities)
    return MoEOutput(like.new_zeros(0, like.shape[-1]), routing, ids.new_zeros(num_experts), like.new_zeros(()), info)


class Retriever(nn.Module):
    """The retrieval layer: attention across a cell's 2|O| inputs, the restricted sparse MoE, the weighted means."""

    def __init__(self, cfg: ModelConfig, num_modalities: int) -> None:
        super().__init__()
        r, D = cfg.retriever, cfg.dim
        router = RestrictedNoisyTopK(D, r.candidates, r.shared, r.top_k, num_modalities)
        moe = MoE(D, r.hidden, router, GateLossConfig(supervision="none"), init=cfg.moe.init)
        self.layer = FusionLayer(D, cfg.heads, cfg.dropout, moe, cfg.attn_residual, cfg.attn_out_dropout)
        self.output, self.inter_weight = r.output, r.inter_weight
        self.num_modalities = num_modalities

    @property
    def router(self) -> RestrictedNoisyTopK:
        return self.layer.ffn.router

    def forward(self, inputs_CGPD: Tensor, target_C: Tensor, combo_C: Tensor) -> tuple[Tensor, MoEOutput]:
        """Retrieved P x D tokens per cell (first half of G: the supporting group, second: the sample's own)."""
        C, G, P, D = inputs_CGPD.shape
        modality_T = target_C.repeat_interleave(G * P)
        info = TokenInfo(modality_T, combo_C.repeat_interleave(G * P), self.num_modalities)
        x_CLD, moe_out = self.layer(inputs_CGPD.reshape(C, G * P, D), info)
        moe_out.info = info
        out_CGPD = x_CLD.view(C, G, P, D) if self.output == "retrieved" else inputs_CGPD
        s = G // 2
        w = self.inter_weight
        return (1 - w) * out_CGPD[:, :s].mean(dim=1) + w * out_CGPD[:, s:].mean(dim=1), moe_out


def concat_outputs(outs: list[MoEOutput], num_modalities: int) -> MoEOutput:
    """The retrievals of one batch (one call per group size) as one layer output for the routing report."""
    r = [o.routing for o in outs]
    routing = Routing(
        *(torch.cat([getattr(x, f) for x in r]) for f in ("weights_TK", "ids_TK", "logits_TE", "load_TE"))
    )
    info = TokenInfo(torch.cat([o.info.modality_T for o in outs]), torch.cat([o.info.combo_T for o in outs]),
                     num_modalities)  # fmt: skip
    counts = torch.stack([o.tokens_per_expert_E for o in outs]).sum(dim=0)
    return MoEOutput(torch.cat([o.out_TD for o in outs]), routing, counts, outs[0].aux_loss.new_zeros(()), info)


class MoERetriever(nn.Module):
    """Encoders, the retriever for missing modalities (after warm-up), a dense fusion transformer, a linear head."""

    keeps_training_rows = True  # the training split lives in the model (multimoe.pools)

    def __init__(self, cfg: ModelConfig, schema: DataSchema) -> None:
        super().__init__()
        self.cfg, self.schema = cfg, schema
        M, P, D = schema.num_modalities, cfg.tokens, cfg.dim
        self.encoders = nn.ModuleDict(
            {
                m: ENCODERS.build(cfg.encoder.kind, f, P, D, cfg.encoder)
                for m, f in zip(schema.modalities, schema.features)
            }
        )
        self.pool = TrainingPool(schema, cfg.pool_rows)
        self.retriever = Retriever(cfg, M)
        self.pos_LD = nn.Parameter(torch.zeros(M * P, D))
        self.layers = nn.ModuleList(
            [
                FusionLayer(
                    D,
                    cfg.heads,
                    cfg.dropout,
                    DropoutFFN(D, cfg.dense_hidden, cfg.dropout),
                    cfg.attn_residual,
                    cfg.attn_out_dropout,
                )  # fmt: skip
                for _ in range(cfg.layers)
            ]
        )
        self.head = nn.Linear(M * D, schema.num_classes)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))  # training samples seen (the warm-up)
        self.support_counts = {"cells": 0, "short": 0, "unsupported": 0}  # retrievals; too few exact support rows

    def run_notes(self) -> list[str]:
        """How often supporting groups fell short, over every forward pass of the run (training and evaluation)."""
        c = self.support_counts
        if c["cells"] == 0:
            return ["MoE-Retriever retrieved no missing modality (warm-up only, or no sample missing one)"]
        how = "drawn again with replacement" if self.cfg.retriever.short_support == "replace" else "O relaxed"
        return [
            f"MoE-Retriever retrieved {c['cells']} missing (sample, modality) cells over the run's forward passes; "
            f"{c['short']} ({c['short'] / c['cells']:.1%}) had fewer than |O| training samples observing the "
            f"missing modality and every observed one ({how}); {c['unsupported']} had no training sample observing "
            "the missing modality (left as zeros)"
        ]

    def retrieving(self) -> bool:
        """Whether missing modalities are retrieved: in training after the warm-up's samples, in evaluation once a
        training step has retrieved (until then the model has only learnt with zeros)."""
        warmup = self.cfg.retriever.warmup_epochs * self.cfg.pool_rows
        seen = int(self.seen)
        return seen >= warmup if self.training else (seen > warmup or warmup == 0)

    def forward(self, batch: Batch) -> ModelOutput:
        M, P, D = self.schema.num_modalities, self.cfg.tokens, self.cfg.dim
        present_BM = batch.present_BM
        enc_BMPD = torch.stack(
            [self.encoders[m](batch.inputs[m], batch.cell_missing[m]) for m in self.schema.modalities], dim=1
        )
        tokens_BMPD = enc_BMPD * present_BM[:, :, None, None].to(enc_BMPD.dtype)  # warm-up: zeros (its code)
        B = tokens_BMPD.shape[0]
        aux = tokens_BMPD.new_zeros(())
        retrieval = empty_routing(
            tokens_BMPD.reshape(-1, D), self.retriever.router.num_experts, self.cfg.retriever.top_k, M
        )
        if self.retrieving() and not bool(present_BM.all()):
            tokens_BMPD, retrieval = self.retrieve(tokens_BMPD, batch)
            aux = balance_loss(retrieval.routing, retrieval.info.modality_T, M, self.retriever.router.allowed_ME).sum()
        if self.training:
            self.seen += B
        x_BLD = tokens_BMPD.reshape(B, M * P, D) + self.pos_LD
        for layer in self.layers:
            x_BLD, _ = layer(x_BLD, None)
        logits_BC = self.head(x_BLD.view(B, M, P, D).mean(dim=2).reshape(B, M * D))
        return ModelOutput(logits_BC, aux, [retrieval], None)

    def retrieve(self, tokens_BMPD: Tensor, batch: Batch) -> tuple[Tensor, MoEOutput]:
        """The tokens with every missing (sample, modality) retrieved, and the retriever's routing."""
        M = self.schema.num_modalities
        present_BM = batch.present_BM
        cell_b, cell_m = torch.nonzero(~present_BM, as_tuple=True)
        observed_CM = present_BM[cell_b]
        count_C = observed_CM.sum(dim=1)
        generator = eval_generator(self.training, present_BM.device)
        draw = draw_support(self.pool.present_NM, cell_m, observed_CM, count_C, self.cfg.retriever.short_support,
                            generator)  # fmt: skip
        self.support_counts["cells"] += int(cell_b.numel())
        self.support_counts["short"] += int(draw.short_C.sum())
        self.support_counts["unsupported"] += int((~draw.supported_C).sum())
        support_CSPD = self.encode_support(draw.rows_CS, cell_m)
        out = tokens_BMPD.clone()
        outs = []
        for s in torch.unique(count_C).tolist():
            cells_R = torch.nonzero((count_C == s) & draw.supported_C).flatten()
            if cells_R.numel() == 0:
                continue
            b_R = cell_b[cells_R]
            own_RS = torch.nonzero(observed_CM[cells_R])[:, 1].view(-1, s)  # the observed modalities, in order
            own_RSPD = tokens_BMPD[b_R[:, None], own_RS]
            inputs_RGPD = torch.cat([support_CSPD[cells_R, :s], own_RSPD], dim=1)
            retrieved_RPD, moe_out = self.retriever(inputs_RGPD, cell_m[cells_R], batch.combo_B[b_R])
            out = out.index_put((b_R, cell_m[cells_R]), retrieved_RPD)
            outs.append(moe_out)
        if not outs:
            return out, empty_routing(tokens_BMPD.reshape(-1, tokens_BMPD.shape[-1]),
                                      self.retriever.router.num_experts, self.cfg.retriever.top_k, M)  # fmt: skip
        return out, concat_outputs(outs, M)

    def encode_support(self, rows_CS: Tensor, target_C: Tensor) -> Tensor:
        """C x S x P x D: the target modality of each cell's support rows, through that modality's encoder."""
        C, S = rows_CS.shape
        P, D = self.cfg.tokens, self.cfg.dim
        out = rows_CS.new_zeros(C, S, P, D, dtype=self.pos_LD.dtype)
        for i, m in enumerate(self.schema.modalities):
            cells = torch.nonzero(target_C == i).flatten()
            if cells.numel() == 0:
                continue
            values, missing = self.pool.inputs(i, rows_CS[cells].reshape(-1))
            out[cells] = self.encoders[m](values, missing).view(cells.numel(), S, P, D)
        return out
