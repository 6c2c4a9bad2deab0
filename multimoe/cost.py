"""Compute accounting: total parameters, active parameters, forward FLOPs per sample.

FLOPs are counted analytically for the matmuls (2 per multiply-add; element-wise work ignored), in evaluation mode
(no router noise), because torch's FlopCounterMode sees neither grouped matmuls nor CPU fused attention; a test
checks these formulas against FlopCounterMode on the code paths it does see. The encoders of series, image and text
modalities (convolutions, attention over steps) are counted by FlopCounterMode on one example row, which sees every
operation they use. Active parameters are those one token
(and its sample) uses: all shared weights, the k chosen experts of each MoE layer (with whatever else the layer keeps
per expert, e.g. Conf-SMoE's confidence networks), the router, and one combination's block of the missing-modality
bank.

``flops_per_sample`` is the forward of one sample with every modality present, at inference;
``train_flops_per_sample`` the forward of one such sample in a training step (the same for most models; I2MoE runs
each of its M + 2 experts on 1 + M variants of the sample, (M + 2)(M + 1) backbone forwards; Conf-SMoE adds its
confidence target's head; router noise is not counted). What missing modalities add (Conf-SMoE's post-imputation, one
MoE-Retriever retrieval per missing cell: ``retrieval_flops``) depends on the data and is not in either number.
"""

from __future__ import annotations

import dataclasses
import math

from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from multimoe.config import ModelConfig
from multimoe.data.dataset import DataSchema
from multimoe.data.kinds import ENCODER_KIND, KindShape, empty_inputs
from multimoe.encoders import input_width, mlp_input_width
from multimoe.missing import BankFill
from multimoe.moe import MoE


def _encoder_flops(cfg: ModelConfig, features: int) -> int:
    width = input_width(features, cfg.encoder)
    P, D = cfg.tokens, cfg.dim
    if cfg.encoder.kind == "patch_linear":
        return 2 * P * math.ceil(width / P) * D
    p = cfg.encoder.periodic  # periodic_mlp: each feature's map 2k -> d before the MLP
    embedding = 2 * features * 2 * p.frequencies * p.width if cfg.encoder.kind == "periodic_mlp" else 0
    width = mlp_input_width(features, cfg.encoder)
    return embedding + 2 * width * cfg.encoder.hidden + 2 * cfg.encoder.hidden * P * D


def _attention_flops(tokens: int, dim: int) -> int:
    """Query, key/value and output maps, scores and the weighted sum, for a sequence of ``tokens``."""
    return 8 * tokens * dim * dim + 4 * tokens * tokens * dim


def example_input(shape: KindShape, rows: int = 1):
    """Inputs of ``rows`` rows of a modality (zeros, every position observed): ``(x, missing)`` as batches hold them."""
    return empty_inputs(shape, rows, missing=False)


def _kind_encoder_flops(encoder: nn.Module, shape: KindShape) -> int:
    """FLOPs of one row through an encoder of a series, image or text modality, as FlopCounterMode counts them."""
    was_training = encoder.training
    encoder.eval()
    with FlopCounterMode(display=False) as counter:  # (not under no_grad: its module tracker needs autograd)
        encoder(*example_input(shape))
    encoder.train(was_training)
    return int(counter.get_total_flops())


def _encoders_flops(model: nn.Module, cfg: ModelConfig, schema: DataSchema) -> list[int]:
    """Per modality: its encoder's FLOPs per sample."""
    return [
        _encoder_flops(cfg, shape.shape[0]) if ENCODER_KIND[shape.kind] == "table"
        else _kind_encoder_flops(model.encoders[m], shape)
        for m, shape in zip(schema.modalities, schema.inputs)
    ]  # fmt: skip


def _fusion_flops(cfg: ModelConfig, schema: DataSchema, encoders: list[int]) -> int:
    M, P, D, C = schema.num_modalities, cfg.tokens, cfg.dim, schema.num_classes
    L = M * P
    flops = sum(encoders) + 2 * M * D * C
    attention = _attention_flops(L, D)
    if cfg.ffn == "dense":
        ffn = 4 * L * D * cfg.dense_hidden
    else:
        k = cfg.moe.router.top_k  # router scores, k experts' two products, the gate-weighted sum of k outputs
        ffn = 2 * L * D * cfg.moe.num_experts + 4 * L * k * D * cfg.moe.hidden + 2 * L * k * D
    return flops + cfg.layers * (attention + ffn)


def _linear_flops(dims: list[int]) -> int:
    """A stack of linear maps dims[0] -> dims[1] -> ... (one sample)."""
    return sum(2 * a * b for a, b in zip(dims, dims[1:]))


def i2moe_flops(cfg: ModelConfig, schema: DataSchema, training: bool = False) -> int:
    """Shared encoders, the reweighting MLP, M + 2 experts (each: fusion layers with the dense feed-forward and a
    head) on 1 variant at inference or, in training, 1 + the perturbed modalities (all M, or ``i2moe.perturbed``),
    and the weighted sum of the experts' logits."""
    M, P, D, C = schema.num_modalities, cfg.tokens, cfg.dim, schema.num_classes
    L, E = M * P, M + 2
    backbone = cfg.layers * (_attention_flops(L, D) + 4 * L * D * cfg.dense_hidden) + 2 * M * D * C
    r = cfg.i2moe
    reweight = _linear_flops([M * D] + [r.reweight_hidden] * (r.reweight_layers - 1) + [E])
    encoders = sum(_encoder_flops(cfg, f) for f in schema.features)
    perturbed = M if r.perturbed == 0 else min(r.perturbed, M)
    return encoders + reweight + E * (1 + perturbed if training else 1) * backbone + 2 * E * C


def confsmoe_flops(cfg: ModelConfig, schema: DataSchema, training: bool = False) -> int:
    """Encoders, per layer attention and the confidence MoE on every token (router scores, k experts, the weighted
    sum of their outputs; in training also the p_GT head on every slot), the head
    Linear(M*D, D) -> LayerNorm -> Linear(D, C)."""
    M, P, D, C = schema.num_modalities, cfg.tokens, cfg.dim, schema.num_classes
    L, E, k, H = M * P, cfg.moe.num_experts, cfg.moe.router.top_k, cfg.moe.hidden
    moe = 2 * L * D * E + 4 * L * k * D * H + 2 * L * k * D
    if training:
        moe += 2 * L * k * D * C
    encoders = sum(_encoder_flops(cfg, f) for f in schema.features)
    return encoders + cfg.layers * (_attention_flops(L, D) + moe) + 2 * M * D * D + 2 * D * C


def retriever_flops(cfg: ModelConfig, schema: DataSchema) -> int:
    """MoE-Retriever on a sample with every modality present: encoders, the dense fusion transformer, the head."""
    M, P, D, C = schema.num_modalities, cfg.tokens, cfg.dim, schema.num_classes
    L = M * P
    encoders = sum(_encoder_flops(cfg, f) for f in schema.features)
    return encoders + cfg.layers * (_attention_flops(L, D) + 4 * L * D * cfg.dense_hidden) + 2 * M * D * C


def retrieval_flops(cfg: ModelConfig, schema: DataSchema, target: int, observed: int) -> int:
    """One retrieved cell (modality ``target`` of a sample observing ``observed`` modalities): the supporting group's
    encodings of the target, then the retriever layer on the 2 * observed inputs' tokens (attention across them,
    router scores, k experts, their weighted sum)."""
    r, P, D = cfg.retriever, cfg.tokens, cfg.dim
    T = 2 * observed * P
    E = r.candidates * schema.num_modalities + r.shared
    layer = _attention_flops(T, D) + 2 * T * D * E + 4 * T * r.top_k * D * r.hidden + 2 * T * r.top_k * D
    return observed * _encoder_flops(cfg, schema.features[target]) + layer


FLOPS = {"i2moe": i2moe_flops, "confsmoe": confsmoe_flops}


def model_costs(model: nn.Module, cfg: ModelConfig, schema: DataSchema) -> dict:
    """{"parameters", "active_parameters", "flops_per_sample", "train_flops_per_sample"} of a neural model built
    from ``cfg``."""
    total = sum(p.numel() for p in model.parameters())
    if cfg.members > 1:  # an ensemble: every member's cost, its parameters counted once each
        one = model_costs(model.members[0], dataclasses.replace(cfg, members=1), schema)
        flops = {k: v * cfg.members for k, v in one.items() if k.endswith("flops_per_sample")}
        return {"parameters": total, "active_parameters": one["active_parameters"] * cfg.members, **flops}
    inactive = 0
    for module in model.modules():
        if isinstance(module, MoE):  # only k experts per token are active, and what the layer keeps per expert
            E, k = module.num_experts, module.router.top_k
            per_expert = sum(p[0].numel() for p in module.parameters(recurse=False) if p.shape[0] == E)
            inactive += (E - k) * per_expert
        if isinstance(module, BankFill):  # a sample reads at most one combination's block
            inactive += module.bank_SMPD[1:].numel()
    encoders = _encoders_flops(model, cfg, schema)
    train_flops = None
    if cfg.arch == "late_fusion":
        flops = sum(f + 2 * cfg.tokens * cfg.dim * schema.num_classes for f in encoders)
    elif cfg.arch in FLOPS:
        flops, train_flops = FLOPS[cfg.arch](cfg, schema), FLOPS[cfg.arch](cfg, schema, training=True)
    elif cfg.arch == "moe_retriever":
        flops = retriever_flops(cfg, schema)
    else:
        flops = _fusion_flops(cfg, schema, encoders)
    return {"parameters": total, "active_parameters": total - inactive, "flops_per_sample": flops,
            "train_flops_per_sample": flops if train_flops is None else train_flops}  # fmt: skip
