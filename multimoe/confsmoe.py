"""Conf-SMoE (arXiv 2505.19525): confidence-guided sparse MoE with two-stage imputation, on the harness's parts
(PEERS.md; facts from its public code, IcurasLW/Official-Repository-of-ConfSMoE at a64fdd9).

Shape letters: the legend in ``multimoe/__init__.py`` (B batch, M modalities, P tokens per modality, L = M*P, D
width, T routed tokens, K experts per token, A = K*T (token, slot) assignments, E experts, C classes; here also
C for imputed cells where no class axis is near, J the other modalities of a cell, Q their tokens, J*P).

- Pre-imputation (before the encoders): a missing (sample, modality m) gets the encoding of the mean input of
  ``pre_impute`` (10) training samples that observe m, drawn with replacement, at training and at test time (its
  ``run_epoch``); the training rows live in the model (``multimoe.pools``). Inference is therefore random, as in
  its code; evaluation draws from a fixed-seed generator per call so that repeated evaluations agree.
- Layer: pre-LN attention over all M*P tokens with the residual (its code adds the attention output to itself and
  loses the input, as Flex-MoE's: restored here); then the MoE feed-forward on the tokens of observed modalities
  only: LN, the router's top-k experts (Linear(D, D) -> GELU -> Linear(D, D)), each expert's output weighed by its
  confidence c = sigmoid(Linear(LayerNorm(E_e(x)))) (a ConfNet per expert) instead of the softmax score, and a
  post-LN residual: x = LN(x + sum_k c_k E_k(LN(x))), with one LayerNorm for complete samples and one for
  incomplete ones (its ``layer_norm_1`` / ``layer_norm_2``). ``confidence=expert_mean`` (its MIMIC setting) gives
  every token routed to expert e the mean confidence of the batch's tokens of its modality routed to e (its code
  calls the MoE once per modality).
- Post-imputation (first layer, incomplete samples): the tokens of a missing modality (LN(x)) query the top-k
  expert outputs of the sample's other, observed modalities (queries and keys through two linear maps; the key
  projections double as values, as in its code), a softmax over those tokens per expert slot keeps the top
  floor((M-1)P/4) tokens, and x = LN(x + the weighted sum) with the incomplete samples' LayerNorm. Its code lets
  the zero outputs of the sample's other missing modalities into that softmax (their keys are the key map's bias)
  and normalises differently depending on which modalities the rest of the batch misses: here the other missing
  modalities are masked out and every missing token is normalised once.
- Complete samples pass every layer; incomplete samples only the first (its ``ConfSMoE.forward``).
- Head (its readout): Linear(M*D, D) -> LayerNorm -> Linear(D, C) on the per-modality token means.
- Loss: cross-entropy + MSE(c, p_GT) with weight 1 (``train.gate_loss_weight``), p_GT the probability a linear head
  shared by the experts of a layer gives the sample's label from the expert's output, over every routed (token,
  slot) of every layer; no load-balance loss. The target is not detached, as in its code: that head learns from
  this loss alone, so a detached target would be the probability of an untrained head. Its code averages the
  squared errors together with zeros for the missing tokens' slots; here only routed slots count.
- Router: its code computes softmax gate scores and never uses them and has no auxiliary loss, so the router gets no
  gradient: routing is a fixed random projection plus noise (``router=frozen``). The paper's evident intent is a
  router that learns (``router=trained``, the default): the combining weight of slot k is
  c_k * s_k / stopgrad(s_k), s the softmax over the top-k scores, whose value is c_k (the forward is unchanged)
  and whose gradient trains the scores as a softmax gate's would, scaled by the confidence.
- Its code has no validation split (it scores the test set every epoch and reports the best); the harness selects
  on validation. Its code does not run as released; nothing of its data loading is reproduced.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multimoe.batch import Batch
from multimoe.config import GateLossConfig, ModelConfig
from multimoe.data.dataset import DataSchema
from multimoe.dropout import Dropout
from multimoe.model import Attention, ModelOutput
from multimoe.moe import MoE, MoEOutput, TokenInfo
from multimoe.pools import TrainingPool, eval_generator
from multimoe.registry import ENCODERS, ROUTERS
from multimoe.routers import Routing


class ConfidenceMoE(MoE):
    """The harness's MoE engine with Conf-SMoE's gate: per-slot expert outputs weighed by per-expert confidences."""

    def __init__(self, cfg: ModelConfig, num_modalities: int, num_classes: int) -> None:
        r, D, E = cfg.moe.router, cfg.dim, cfg.moe.num_experts
        router = ROUTERS.build(r.kind, D, E, r.top_k, r.layout, num_modalities)
        super().__init__(D, cfg.moe.hidden, router, GateLossConfig(supervision="none"), init=cfg.moe.init)
        E = router.num_experts
        self.router_mode, self.confidence_mode = cfg.confsmoe.router, cfg.confsmoe.confidence
        self.conf_gain_ED = nn.Parameter(torch.ones(E, D))  # each ConfNet: LayerNorm(D) -> Linear(D, 1) -> sigmoid
        self.conf_shift_ED = nn.Parameter(torch.zeros(E, D))
        bound = 1.0 / math.sqrt(D)  # nn.Linear's default initialisation, per expert
        self.conf_w_ED = nn.Parameter(torch.empty(E, D).uniform_(-bound, bound))
        self.conf_b_E = nn.Parameter(torch.empty(E).uniform_(-bound, bound))
        self.prob_head = nn.Linear(D, num_classes)  # the p_GT head shared by the layer's experts (its prob_layer)

    def confidences(self, y_AD: Tensor, expert_A: Tensor) -> Tensor:
        """c_a = sigmoid(ConfNet_e(y_a)) for each (token, slot) output y_a of expert e = ``expert_A[a]``."""
        z_AD = F.layer_norm(y_AD, y_AD.shape[-1:])
        z_AD = z_AD * self.conf_gain_ED.index_select(0, expert_A) + self.conf_shift_ED.index_select(0, expert_A)
        return torch.sigmoid((z_AD * self.conf_w_ED.index_select(0, expert_A)).sum(dim=1) + self.conf_b_E[expert_A])

    def forward(self, x_TD: Tensor, info: TokenInfo, labels_T: Tensor | None = None) -> MoEOutput:
        if self.router_mode == "frozen":
            with torch.no_grad():
                routing = self.router(x_TD, info.modality_T)
        else:
            routing = self.router(x_TD, info.modality_T)
        T, K = routing.ids_TK.shape
        expert_A = routing.ids_TK.t().reshape(-1)  # slot-major: a = k * T + t
        ones_A1 = x_TD.new_ones(K * T, 1)
        y_AD, counts_E = self.engine(
            x_TD.repeat(K, 1), expert_A[:, None], ones_A1, self.w1_EDH, self.b1_EH, self.w2_EHD, self.b2_ED
        )
        c_A = self.confidences(y_AD, expert_A)
        if self.confidence_mode == "expert_mean":
            c_A = group_mean(c_A, info.modality_T.repeat(K) * self.num_experts + expert_A, info.num_modalities)
        c_TK = c_A.view(K, T).t()
        mix_TK = c_TK
        if self.router_mode == "trained":
            s_TK = routing.weights_TK
            mix_TK = c_TK * s_TK / s_TK.detach()
        y_TKD = y_AD.view(K, T, x_TD.shape[1]).transpose(0, 1)
        out_TD = torch.bmm(mix_TK.unsqueeze(1), y_TKD).squeeze(1)
        aux = x_TD.new_zeros(())
        if labels_T is not None and T > 0:
            aux = confidence_loss(c_A, self.prob_head(y_AD), labels_T.repeat(K))
        shown = Routing(c_TK.detach(), routing.ids_TK, routing.logits_TE.detach(), routing.load_TE.detach())
        out = MoEOutput(out_TD, shown, counts_E, aux, info)
        out.slots_TKD = y_TKD  # each slot's expert output, for the post-imputation
        return out


def group_mean(values_A: Tensor, group_A: Tensor, num_modalities: int) -> Tensor:
    """Each value replaced by the mean of its group's values (groups: modality x expert)."""
    G = int(group_A.max()) + 1 if group_A.numel() else 1
    sums_G = values_A.new_zeros(G).index_add(0, group_A, values_A)
    counts_G = values_A.new_zeros(G).index_add(0, group_A, torch.ones_like(values_A))
    return (sums_G / counts_G.clamp(min=1))[group_A]


def confidence_loss(c_A: Tensor, class_logits_AC: Tensor, labels_A: Tensor) -> Tensor:
    """Mean squared error between each slot's confidence and p_GT, the probability the shared head gives the
    sample's label from that slot's expert output (not detached: see the module's docstring)."""
    p_gt_A = class_logits_AC.softmax(dim=1).gather(1, labels_A[:, None]).squeeze(1)
    return F.mse_loss(c_A, p_gt_A)


def top_tokens(num_modalities: int, tokens: int) -> int:
    """Tokens the post-imputation keeps: floor((M - 1) P / 4), at least 1 (its code's ``(n_mod - 1)*seq_len // 4``)."""
    return max((num_modalities - 1) * tokens // 4, 1)


class ConfLayer(nn.Module):
    """Attention, the confidence MoE on observed tokens, and (first layer) the post-imputation of missing ones."""

    def __init__(self, cfg: ModelConfig, num_modalities: int, num_classes: int) -> None:
        super().__init__()
        D = cfg.dim
        self.norm1, self.norm2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = Attention(D, cfg.heads, cfg.dropout, cfg.attn_out_dropout)
        self.drop1 = Dropout(cfg.dropout)
        self.attn_residual = cfg.attn_residual
        self.moe = ConfidenceMoE(cfg, num_modalities, num_classes)
        self.norm_complete, self.norm_incomplete = nn.LayerNorm(D), nn.LayerNorm(D)  # its layer_norm_1 / _2
        self.query, self.key = nn.Linear(D, D), nn.Linear(D, D)  # its q_linear / k_linear
        self.tokens = cfg.tokens

    def forward(self, x_BLD: Tensor, present_BM: Tensor, combo_B: Tensor, labels_B: Tensor | None,
                impute: bool) -> tuple[Tensor, MoEOutput]:  # fmt: skip
        B, L, D = x_BLD.shape
        M, P = present_BM.shape[1], self.tokens
        a_BLD = self.attn(self.norm1(x_BLD))
        x_BLD = (x_BLD if self.attn_residual else a_BLD) + self.drop1(a_BLD)
        h_BLD = self.norm2(x_BLD)
        observed_BL = present_BM.repeat_interleave(P, dim=1)
        rows_T = torch.nonzero(observed_BL.reshape(-1)).flatten()  # the routed tokens: observed modalities only
        modality_L = torch.arange(M, device=x_BLD.device).repeat_interleave(P)
        info = TokenInfo(modality_L.repeat(B)[rows_T], combo_B.repeat_interleave(L)[rows_T], M)
        labels_T = None if labels_B is None else labels_B.repeat_interleave(L)[rows_T]
        out = self.moe(h_BLD.reshape(B * L, D).index_select(0, rows_T), info, labels_T)
        y_BLD = x_BLD.new_zeros(B * L, D).index_copy(0, rows_T, out.out_TD).view(B, L, D)
        complete_B11 = present_BM.all(dim=1)[:, None, None]
        moe_BLD = torch.where(complete_B11, self.norm_complete(x_BLD + y_BLD), self.norm_incomplete(x_BLD + y_BLD))
        x_new_BLD = torch.where(observed_BL[:, :, None], moe_BLD, x_BLD)
        if impute and not bool(present_BM.all()):
            K = out.slots_TKD.shape[1]
            slots_BLKD = x_BLD.new_zeros(B * L, K, D).index_copy(0, rows_T, out.slots_TKD).view(B, L, K, D)
            imputed_BLD = self.post_impute(h_BLD, slots_BLKD, present_BM)
            x_new_BLD = torch.where(observed_BL[:, :, None], x_new_BLD, self.norm_incomplete(x_BLD + imputed_BLD))
        return x_new_BLD, out

    def post_impute(self, h_BLD: Tensor, slots_BLKD: Tensor, present_BM: Tensor) -> Tensor:
        """B x L x D: for every missing (sample, modality) cell, its tokens' attention over the top-k expert outputs
        of the sample's other observed modalities, top floor((M-1)P/4) tokens per slot (zero elsewhere)."""
        B, L, K, D = slots_BLKD.shape
        M = present_BM.shape[1]
        P = L // M
        cell_b, cell_m = torch.nonzero(~present_BM, as_tuple=True)
        others_MJ = torch.tensor([[j for j in range(M) if j != m] for m in range(M)], device=h_BLD.device)
        others_CJ = others_MJ[cell_m].view(-1, M - 1)
        q_CPD = self.query(h_BLD.view(B, M, P, D)[cell_b, cell_m])
        k_CJPKD = self.key(slots_BLKD.view(B, M, P, K, D)[cell_b[:, None], others_CJ])
        C, J = others_CJ.shape
        k_CQKD = k_CJPKD.reshape(C, J * P, K, D)
        logits_CPQK = torch.einsum("cpd,cqkd->cpqk", q_CPD, k_CQKD) / math.sqrt(D)
        seen_CQ = present_BM[cell_b[:, None], others_CJ].repeat_interleave(P, dim=1)
        logits_CPQK = logits_CPQK.masked_fill(~seen_CQ[:, None, :, None], float("-inf"))
        attn_CPQK = logits_CPQK.softmax(dim=2)
        top_w, top_i = attn_CPQK.topk(min(top_tokens(M, P), J * P), dim=2)
        kept_CPQK = torch.zeros_like(attn_CPQK).scatter(2, top_i, top_w)
        out_CPD = torch.einsum("cpqk,cqkd->cpd", kept_CPQK, k_CQKD)
        out_BMPD = h_BLD.new_zeros(B, M, P, D).index_put((cell_b, cell_m), out_CPD)
        return out_BMPD.view(B, L, D)


class ConfSMoE(nn.Module):
    """Encoders with pre-imputation from the training pool, confidence-MoE layers, Conf-SMoE's head."""

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
        self.pos_LD = nn.Parameter(torch.zeros(M * P, D))
        self.layers = nn.ModuleList([ConfLayer(cfg, M, schema.num_classes) for _ in range(cfg.layers)])
        self.head = nn.Sequential(nn.Linear(M * D, D), nn.LayerNorm(D), nn.Linear(D, schema.num_classes))

    def pre_impute(self, batch: Batch) -> Batch:
        """The batch with each missing (sample, modality) replaced by the mean input of ``pre_impute`` training
        samples that observe the modality (cell masks: none missing; the presence mask is kept)."""
        generator = eval_generator(self.training, batch.present_BM.device)
        inputs, cell_missing = dict(batch.inputs), dict(batch.cell_missing)
        for i, m in enumerate(self.schema.modalities):
            rows_N = torch.nonzero(~batch.present_BM[:, i]).flatten()
            if rows_N.numel() == 0:
                continue
            drawn_NR = self.pool.draw_having(i, (rows_N.numel(), self.cfg.confsmoe.pre_impute), generator)
            values_NRF, _ = self.pool.inputs(i, drawn_NR)
            inputs[m] = inputs[m].index_copy(0, rows_N, values_NRF.mean(dim=1))
            cell_missing[m] = cell_missing[m].index_fill(0, rows_N, False)
        return dataclasses.replace(batch, inputs=inputs, cell_missing=cell_missing)

    def forward(self, batch: Batch) -> ModelOutput:
        M, P, D = self.schema.num_modalities, self.cfg.tokens, self.cfg.dim
        filled = self.pre_impute(batch)
        tokens_BMPD = torch.stack(
            [self.encoders[m](filled.inputs[m], filled.cell_missing[m]) for m in self.schema.modalities], dim=1
        )
        B = tokens_BMPD.shape[0]
        x_BLD = tokens_BMPD.reshape(B, M * P, D) + self.pos_LD
        labels_B = batch.labels_B if self.training else None
        present_BM, combo_B = batch.present_BM, batch.combo_B
        outs, aux = [], x_BLD.new_zeros(())
        x_BLD, out = self.layers[0](x_BLD, present_BM, combo_B, labels_B, impute=True)
        outs.append(out)
        complete_R = torch.nonzero(present_BM.all(dim=1)).flatten()  # later layers: complete samples only
        for layer in self.layers[1:]:
            sub_labels = None if labels_B is None else labels_B[complete_R]
            x_RLD, out = layer(x_BLD[complete_R], present_BM[complete_R], combo_B[complete_R], sub_labels, False)
            x_BLD = x_BLD.index_copy(0, complete_R, x_RLD)
            outs.append(out)
        for out in outs:
            aux = aux + out.aux_loss
            del out.slots_TKD
        pooled_BMD = x_BLD.view(B, M, P, D).mean(dim=2)
        return ModelOutput(self.head(pooled_BMD.reshape(B, M * D)), aux / len(outs), outs, None)
