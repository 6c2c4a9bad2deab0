"""Compute accounting: total parameters, active parameters, forward FLOPs per sample.

FLOPs are counted analytically for the matmuls (2 per multiply-add; element-wise work ignored), in evaluation mode
(no router noise), because torch's FlopCounterMode sees neither grouped matmuls nor CPU fused attention; a test
checks these formulas against FlopCounterMode on the code paths it does see. The encoders of series, image and text
modalities (convolutions, attention over steps) are counted by FlopCounterMode on one example row, which sees every
operation they use. Active parameters are those one token
(and its sample) uses: all shared weights, the k chosen experts of each MoE layer, the router, and one
combination's block of the missing-modality bank.
"""

from __future__ import annotations

import math

from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from multimoe.config import ModelConfig
from multimoe.data.dataset import DataSchema
from multimoe.data.kinds import ENCODER_KIND, KindShape, empty_inputs
from multimoe.encoders import input_width
from multimoe.missing import BankFill
from multimoe.moe import MoE


def _encoder_flops(cfg: ModelConfig, features: int) -> int:
    width = input_width(features, cfg.encoder)
    P, D = cfg.tokens, cfg.dim
    if cfg.encoder.kind == "patch_linear":
        return 2 * P * math.ceil(width / P) * D
    return 2 * width * cfg.encoder.hidden + 2 * cfg.encoder.hidden * P * D


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
    attention = 8 * L * D * D + 4 * L * L * D
    if cfg.ffn == "dense":
        ffn = 4 * L * D * cfg.dense_hidden
    else:
        k = cfg.moe.router.top_k  # router scores, k experts' two products, the gate-weighted sum of k outputs
        ffn = 2 * L * D * cfg.moe.num_experts + 4 * L * k * D * cfg.moe.hidden + 2 * L * k * D
    return flops + cfg.layers * (attention + ffn)


def model_costs(model: nn.Module, cfg: ModelConfig, schema: DataSchema) -> dict:
    """{"parameters", "active_parameters", "flops_per_sample"} of a neural model built from ``cfg``."""
    total = sum(p.numel() for p in model.parameters())
    inactive = 0
    for module in model.modules():
        if isinstance(module, MoE):  # only k experts per token are active
            E, k = module.num_experts, module.router.top_k
            per_expert = sum(p[0].numel() for p in (module.w1_EDH, module.b1_EH, module.w2_EHD, module.b2_ED))
            inactive += (E - k) * per_expert
        if isinstance(module, BankFill):  # a sample reads at most one combination's block
            inactive += module.bank_SMPD[1:].numel()
    encoders = _encoders_flops(model, cfg, schema)
    if cfg.arch == "late_fusion":
        flops = sum(f + 2 * cfg.tokens * cfg.dim * schema.num_classes for f in encoders)
    else:
        flops = _fusion_flops(cfg, schema, encoders)
    return {"parameters": total, "active_parameters": total - inactive, "flops_per_sample": flops}
