"""I2MoE (ICML 2025, arXiv 2505.19190): interpretable interaction-aware MoE, on the harness's parts (PEERS.md).

Shape letters: the legend in ``multimoe/__init__.py`` (B batch, M modalities, P tokens per modality, L = M*P, D
width, C classes, E interaction experts = M + 2, T = B*L tokens, K = E: every expert weighs in on every sample).

- Interaction experts: M + 2 copies of the fusion backbone, each with its own positional embedding, fusion layers
  and head (class logits): one uniqueness expert per modality (experts 0..M-1, in modality order), one synergy
  expert (M) and one redundancy expert (M + 1). The per-modality encoders and the missing-modality fill are shared
  (its code encodes once and hands the tokens to every expert). No routing: every expert runs on every sample.
- Backbone (its ``Transformer``): learned positional embedding (zero init) over all M*P tokens, pre-LN layers with
  joint attention and a feed-forward Linear(D, H) -> GELU -> dropout -> Linear(H, D) applied to every token, head
  Linear(M*D, C) on the per-modality token means. Its attention block adds the attention output to itself and loses
  the input (x = a + dropout(a)): here the residual is restored (``FusionLayer``), as for Flex-MoE, and the
  attention's output projection has no second dropout (its ``proj_drop``), also as our Flex-MoE preset.
- Reweighting: an MLP (ReLU, dropout 0.5) on the concatenated per-modality token means of the encoded inputs gives
  E logits; the interaction weights are softmax(logits / T_rw) and the final logits are sum_e w_e * logits_e.
- Interaction losses (training only): every expert runs 1 + M forwards, clean and with modality j's encoded tokens
  replaced by N(0, 1) noise (a fresh draw per expert, as its code). Uniqueness expert i: mean over j != i of a
  triplet margin loss (margin 1, L2) with anchor the clean logits, positive the j-perturbed and negative the
  i-perturbed ones; synergy: mean_j cos(clean, perturbed_j); redundancy: mean_j (1 - cos). L_int = (sum of the M
  uniqueness losses + synergy + redundancy) / (M + 2); the model's auxiliary loss is L_int, weighted by
  ``train.gate_loss_weight`` (lambda_int). A step costs (M + 2)(M + 1) backbone forwards, inference M + 2.
- Missing modalities: the published protocol trains and tests on complete samples only (``data.complete_cases``,
  configs/i2moe.yaml). On incomplete samples (configs/i2moe-all.yaml, ours) the shared fill stands in for absent
  modalities and every term whose perturbed modality is absent is left out of its mean: a triplet (b, i, j) counts
  when sample b observes i and j, a cosine term (b, j) when b observes j. With every modality present the masked
  means are the published ones.

Its code's defects that are not reproduced: the lost attention residual (above); the gate loss of its sparse
backbone wrapped in a new tensor without gradient and gradient clipping after the optimizer step (neither applies:
the transformer backbone has no gate, and the harness clips before the step); the seed bug of multi-seed regression
(the harness seeds every run). The sparse (SwitchGate) backbone is not built here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multimoe.batch import Batch
from multimoe.config import ModelConfig
from multimoe.data.dataset import DataSchema
from multimoe.dropout import Dropout
from multimoe.model import FusionLayer, ModelOutput
from multimoe.moe import MoEOutput, TokenInfo
from multimoe.registry import ENCODERS, FILLS
from multimoe.routers import Routing

TRIPLET_EPS = 1e-7  # its code's TripletMarginLoss(margin=1.0, p=2, eps=1e-7)
TRIPLET_MARGIN = 1.0
REWEIGHT_DROPOUT = 0.5  # its code's MLPReWeighting: dropout=0.5, whatever the model's dropout


class DropoutFFN(nn.Module):
    """The feed-forward of I2MoE's and MoE-Retriever's transformers (their code's ``MLP`` with two layers):
    Linear(D, H) -> GELU -> dropout -> Linear(H, D)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.drop = Dropout(dropout)

    def forward(self, x_TD: Tensor, info: TokenInfo | None = None) -> Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(x_TD))))


def encode_tokens(encoders: nn.ModuleDict, fill: nn.Module, batch: Batch, modalities: tuple[str, ...]) -> Tensor:
    """B x M x P x D tokens: each present modality encoded, each absent one filled (as ``MultimodalMoE``)."""
    enc_BMPD = torch.stack([encoders[m](batch.inputs[m], batch.cell_missing[m]) for m in modalities], dim=1)
    return torch.where(batch.present_BM[:, :, None, None], enc_BMPD, fill(batch.combo_B, batch.present_BM))


class InteractionExpert(nn.Module):
    """One interaction expert: positional embedding, fusion layers with the dropout feed-forward, linear head."""

    def __init__(self, cfg: ModelConfig, num_modalities: int, num_classes: int) -> None:
        super().__init__()
        M, P, D = num_modalities, cfg.tokens, cfg.dim
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
        self.head = nn.Linear(M * D, num_classes)

    def forward(self, tokens_BMPD: Tensor, info: TokenInfo | None = None) -> Tensor:
        B, M, P, D = tokens_BMPD.shape
        x_BLD = tokens_BMPD.reshape(B, M * P, D) + self.pos_LD
        for layer in self.layers:
            x_BLD, _ = layer(x_BLD, info)
        return self.head(x_BLD.view(B, M, P, D).mean(dim=2).reshape(B, M * D))


def reweighting_mlp(in_dim: int, hidden: int, out_dim: int, layers: int) -> nn.Sequential:
    """Its code's ``MLP`` with ReLU: ``layers`` linear maps, ReLU and dropout 0.5 after every one but the last."""
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    parts: list[nn.Module] = []
    for i in range(layers):
        parts.append(nn.Linear(dims[i], dims[i + 1]))
        if i < layers - 1:
            parts += [nn.ReLU(), Dropout(REWEIGHT_DROPOUT)]
    return nn.Sequential(*parts)


class I2MoE(nn.Module):
    """Shared encoders and fill, M + 2 interaction experts, the reweighting MLP."""

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
        self.fill = FILLS.build(cfg.fill, M, P, D)
        self.experts = nn.ModuleList([InteractionExpert(cfg, M, schema.num_classes) for _ in range(M + 2)])
        self.reweight = reweighting_mlp(M * D, cfg.i2moe.reweight_hidden, M + 2, cfg.i2moe.reweight_layers)
        self.register_buffer("modality_L", torch.arange(M).repeat_interleave(P), persistent=False)

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def interaction_weights(self, tokens_BMPD: Tensor) -> tuple[Tensor, Tensor]:
        """The reweighting MLP's logits / T_rw and their softmax (B x E)."""
        B, M, _, D = tokens_BMPD.shape
        logits_BE = self.reweight(tokens_BMPD.mean(dim=2).reshape(B, M * D)) / self.cfg.i2moe.temperature
        return logits_BE, logits_BE.softmax(dim=1)

    def forward(self, batch: Batch) -> ModelOutput:
        M, P = self.schema.num_modalities, self.cfg.tokens
        tokens_BMPD = encode_tokens(self.encoders, self.fill, batch, self.schema.modalities)
        B = tokens_BMPD.shape[0]
        info = TokenInfo(self.modality_L.repeat(B), batch.combo_B.repeat_interleave(M * P), M)
        logits_BE, w_BE = self.interaction_weights(tokens_BMPD)
        if self.training:  # clean + one variant per perturbed modality, as one batch per expert
            modalities_J = perturbed_modalities(M, self.cfg.i2moe.perturbed, tokens_BMPD.device)
            V = modalities_J.shape[0] + 1
            variants = [expert(perturbed(tokens_BMPD, modalities_J), None).view(V, B, -1) for expert in self.experts]
            logits_EVBC = torch.stack(variants)
            aux = interaction_loss(logits_EVBC, batch.present_BM, modalities_J.tolist())
            clean_EBC = logits_EVBC[:, 0]
        else:
            clean_EBC = torch.stack([expert(tokens_BMPD, None) for expert in self.experts])
            aux = tokens_BMPD.new_zeros(())
        final_BC = torch.einsum("be,ebc->bc", w_BE, clean_EBC)
        return ModelOutput(final_BC, aux, [weights_as_routing(logits_BE, w_BE, M * P)], info)


def perturbed(tokens_BMPD: Tensor, modalities_J: Tensor) -> Tensor:
    """(1 + J) * B samples: the tokens as they are, then for each modality j of ``modalities_J`` the tokens with
    modality j's replaced by N(0, 1) noise (one draw for all; each expert calls this afresh, so experts see different
    noise, as in its code)."""
    B, J = tokens_BMPD.shape[0], modalities_J.shape[0]
    out = tokens_BMPD.unsqueeze(0).repeat(J + 1, 1, 1, 1, 1)
    noise_JBPD = torch.randn_like(out[1:, :, 0])
    out[1 + torch.arange(J, device=out.device), :, modalities_J] = noise_JBPD
    return out.view((J + 1) * B, *tokens_BMPD.shape[1:])


def perturbed_modalities(num_modalities: int, per_step: int, device: torch.device) -> Tensor:
    """The modalities a training step perturbs: all (the method), or ``per_step`` drawn at random (its "less perturbed
    forward" ablation: 3(M + 2) forwards with 2), in modality order."""
    if per_step == 0 or per_step >= num_modalities:
        return torch.arange(num_modalities, device=device)
    return torch.randperm(num_modalities)[:per_step].sort().values.to(device)


def weights_as_routing(logits_BE: Tensor, w_BE: Tensor, tokens: int) -> MoEOutput:
    """The interaction weights in the routing report's terms: every token of a sample 'routes' to all E experts with
    its sample's weights (so weight shares per combination or modality are mean interaction weights)."""
    B, E = w_BE.shape
    w_TE = w_BE.detach().repeat_interleave(tokens, dim=0)
    ids_TK = torch.arange(E, device=w_BE.device).expand(w_TE.shape[0], E)
    routing = Routing(w_TE, ids_TK, logits_BE.detach().repeat_interleave(tokens, dim=0), torch.ones_like(w_TE))
    counts_E = torch.full((E,), w_TE.shape[0], device=w_BE.device, dtype=torch.long)
    return MoEOutput(w_TE.new_zeros(0, 0), routing, counts_E, w_BE.new_zeros(()))


# ---------------------------------------------------------------------------------------------------------------
# The interaction losses, on logits: V = 1 + M variants (clean first, then modality j perturbed at 1 + j)


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` where ``valid``; 0 when nothing is valid (a term with no sample to learn from)."""
    w = valid.to(values.dtype)
    return (values * w).sum() / w.sum().clamp(min=1)


def uniqueness_loss(logits_VBC: Tensor, i: int, present_BM: Tensor, perturbed_J: list[int] | None = None) -> Tensor:
    """Uniqueness expert i: triplet margin loss with anchor the clean logits, negative the i-perturbed ones and
    positive each j-perturbed (j != i); mean over the (sample, j) pairs whose sample observes i and j. Variant 1 + n
    of ``logits_VBC`` perturbed modality ``perturbed_J[n]`` (default: every modality in order); an expert whose
    modality was not perturbed this step has no term (0, its ablation's choice)."""
    perturbed_J = list(range(present_BM.shape[1])) if perturbed_J is None else perturbed_J
    if i not in perturbed_J or len(perturbed_J) < 2:
        return logits_VBC.new_zeros(())
    n_i = perturbed_J.index(i)
    others = [n for n in range(len(perturbed_J)) if n != n_i]
    anchor_BC, negative_BC = logits_VBC[0], logits_VBC[1 + n_i]
    positive_JBC = logits_VBC[[1 + n for n in others]]
    d_pos_JB = (anchor_BC - positive_JBC + TRIPLET_EPS).norm(dim=-1)  # torch's pairwise_distance
    d_neg_B = (anchor_BC - negative_BC + TRIPLET_EPS).norm(dim=-1)
    triplet_JB = (d_pos_JB - d_neg_B + TRIPLET_MARGIN).clamp(min=0)
    valid_JB = present_BM[:, [perturbed_J[n] for n in others]].t() & present_BM[:, i]
    return _masked_mean(triplet_JB, valid_JB)


def _cosines(logits_VBC: Tensor) -> Tensor:
    """(V - 1) x B cosine of each perturbed variant's logits with the clean ones (its code's F.normalize)."""
    clean_BC = F.normalize(logits_VBC[0], dim=-1)
    return (F.normalize(logits_VBC[1:], dim=-1) * clean_BC).sum(dim=-1)


def synergy_loss(logits_VBC: Tensor, present_BM: Tensor, perturbed_J: list[int] | None = None) -> Tensor:
    """Synergy expert: mean cos(clean, perturbed_j) over the (sample, j) whose sample observes j (minimised)."""
    perturbed_J = list(range(present_BM.shape[1])) if perturbed_J is None else perturbed_J
    return _masked_mean(_cosines(logits_VBC), present_BM[:, perturbed_J].t())


def redundancy_loss(logits_VBC: Tensor, present_BM: Tensor, perturbed_J: list[int] | None = None) -> Tensor:
    """Redundancy expert: mean (1 - cos(clean, perturbed_j)) over the (sample, j) whose sample observes j."""
    perturbed_J = list(range(present_BM.shape[1])) if perturbed_J is None else perturbed_J
    return _masked_mean(1 - _cosines(logits_VBC), present_BM[:, perturbed_J].t())


def interaction_loss(logits_EVBC: Tensor, present_BM: Tensor, perturbed_J: list[int] | None = None) -> Tensor:
    """L_int = (sum_i uniqueness_i + synergy + redundancy) / (M + 2), expert e's variants at ``logits_EVBC[e]``."""
    M = present_BM.shape[1]
    terms = [uniqueness_loss(logits_EVBC[i], i, present_BM, perturbed_J) for i in range(M)]
    terms += [synergy_loss(logits_EVBC[M], present_BM, perturbed_J)]
    terms += [redundancy_loss(logits_EVBC[M + 1], present_BM, perturbed_J)]
    return torch.stack(terms).sum() / (M + 2)
