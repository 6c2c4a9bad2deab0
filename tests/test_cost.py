import functools

import pytest
import torch
from test_model import ALL_PRESENCE3, SCHEMA3, make_batch, small_cfg
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from multimoe.cost import model_costs
from multimoe.data.dataset import DataSchema
from multimoe.model import build_model, resolve


@pytest.mark.parametrize("arch, ffn, encoder", [("fusion", "moe", "patch_linear"), ("fusion", "dense", "mlp"),
                                                ("late_fusion", "moe", "mlp"),
                                                ("fusion", "moe", "periodic_mlp")])  # fmt: skip
def test_flop_formulas_match_flop_counter(arch, ffn, encoder):
    from benchmarks.reference_paths import expert_ffn_path
    from multimoe import moe

    # exact rows (no padding), one matmul per expert: what the formula counts
    cfg, _ = resolve(small_cfg(kind="softmax_topk"), SCHEMA3)
    cfg.arch, cfg.ffn, cfg.encoder.kind = arch, ffn, encoder
    cfg.dim, cfg.moe.hidden = 6, 10
    model = build_model(cfg, SCHEMA3).eval()
    for module in model.modules():
        if isinstance(module, moe.MoE):
            module.engine = functools.partial(expert_ffn_path, path="loop")
    batch = make_batch(SCHEMA3, ALL_PRESENCE3)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(batch)
    assert counter.get_total_flops() == model_costs(model, cfg, SCHEMA3)["flops_per_sample"] * len(batch)


def test_active_parameters_count_k_experts_and_one_bank_row():
    schema = DataSchema(("a", "b"), (4, 4), ("0", "1"))
    cfg, _ = resolve(small_cfg(), schema)
    model = build_model(cfg, schema)
    costs = model_costs(model, cfg, schema)
    moe = model.layers[0].ffn
    per_expert = sum(p[0].numel() for p in (moe.w1_EDH, moe.b1_EH, moe.w2_EHD, moe.b2_ED))
    bank = model.fill.bank_SMPD
    expected_inactive = (moe.num_experts - 2) * per_expert + bank[1:].numel()
    assert costs["parameters"] - costs["active_parameters"] == expected_inactive
    cfg.ffn, cfg.fill = "dense", "token"
    dense = build_model(cfg, schema)
    dense_costs = model_costs(dense, cfg, schema)
    assert dense_costs["parameters"] == dense_costs["active_parameters"]
