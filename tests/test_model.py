import itertools

import pytest
import torch

from multimoe.batch import Batch, combination_index
from multimoe.config import ModelConfig
from multimoe.data.dataset import DataSchema
from multimoe.model import build_model, resolve
from multimoe.registry import FILLS, ROUTERS, load_config


def small_cfg(**settings) -> ModelConfig:
    """A small model config; ``settings`` go to the router (kind, layout, top_k) or the gate loss."""
    cfg = load_config(
        None,
        [
            "model.dim=16",
            "model.tokens=4",
            "model.heads=2",
            "model.moe.hidden=8",
            "model.moe.num_experts=8",
            "model.moe.router.top_k=2",
        ],  # fmt: skip
    ).model
    for k, v in settings.items():
        setattr(cfg.moe.router if hasattr(cfg.moe.router, k) else cfg.moe.gate_loss, k, v)
    return cfg


def make_batch(schema: DataSchema, present_BM: torch.Tensor) -> Batch:
    B = present_BM.shape[0]
    inputs = {m: torch.randn(B, f) * present_BM[:, i : i + 1] for i, (m, f) in enumerate(
        zip(schema.modalities, schema.features))}  # fmt: skip
    missing = {m: torch.zeros(B, f, dtype=torch.bool) for m, f in zip(schema.modalities, schema.features)}
    return Batch(inputs, missing, present_BM, torch.randint(0, schema.num_classes, (B,)), combination_index(present_BM))


SCHEMA3 = DataSchema(("a", "b", "c"), (5, 7, 3), ("x", "y", "z"))
ALL_PRESENCE3 = torch.tensor([p for p in itertools.product([False, True], repeat=3) if any(p)])


@pytest.mark.parametrize("fill", FILLS.names())
@pytest.mark.parametrize("router", ROUTERS.names())
def test_forward_every_combination_of_three_modalities(fill, router):
    cfg, _ = resolve(small_cfg(kind=router), SCHEMA3)
    cfg.fill = fill
    model = build_model(cfg, SCHEMA3)
    out = model(make_batch(SCHEMA3, ALL_PRESENCE3))
    assert out.logits_BC.shape == (7, 3)
    assert torch.isfinite(out.logits_BC).all() and torch.isfinite(out.aux_loss)
    loss = out.logits_BC.sum() + out.aux_loss
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_missing_modality_uses_the_fill_not_the_encoder():
    cfg, _ = resolve(small_cfg(), SCHEMA3)
    cfg.dropout = 0.0
    model = build_model(cfg, SCHEMA3).eval()
    present = torch.tensor([[True, False, True]])
    batch = make_batch(SCHEMA3, present)
    ref = model(batch).logits_BC
    batch.inputs["b"] = torch.randn(1, 7) * 100  # values of an absent modality must not matter
    torch.testing.assert_close(model(batch).logits_BC, ref)


def test_single_modality_model_works():
    schema = DataSchema(("only",), (6,), ("0", "1"))
    cfg, notes = resolve(small_cfg(), schema)
    model = build_model(cfg, schema)
    out = model(make_batch(schema, torch.ones(4, 1, dtype=torch.bool)))
    assert out.logits_BC.shape == (4, 2)
    out.logits_BC.sum().backward()


def test_experts_raised_to_one_per_combination_with_a_note():
    schema = DataSchema(tuple("abcdef"), (3,) * 6, ("0", "1"))
    cfg, notes = resolve(small_cfg(), schema)
    assert cfg.moe.num_experts == 63 and "63 experts" in notes[0]
    cfg2, notes2 = resolve(small_cfg(combination_map="modulo"), schema)
    assert cfg2.moe.num_experts == 8 and not notes2


def test_dense_ffn_has_the_configured_width():
    cfg, _ = resolve(small_cfg(), SCHEMA3)
    cfg.ffn, cfg.dense_hidden = "dense", 24
    model = build_model(cfg, SCHEMA3)
    ffn = model.layers[0].ffn
    assert ffn.fc1.out_features == 24
    assert model(make_batch(SCHEMA3, ALL_PRESENCE3)).aux_loss.item() == 0.0


def test_no_state_is_kept_between_calls():
    cfg, _ = resolve(small_cfg(), SCHEMA3)
    model = build_model(cfg, SCHEMA3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = {id(m): set(vars(m)) for m in model.modules()}
    for _ in range(3):
        model(make_batch(SCHEMA3, ALL_PRESENCE3)).aux_loss.backward()
    assert all(set(vars(m)) == attrs[id(m)] for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("layout", ["per_modality", "disjoint"])
@pytest.mark.parametrize("supervision", ["balance", "entropy"])
def test_fusemoe_layouts_run_end_to_end(layout, supervision):
    cfg, _ = resolve(small_cfg(kind="laplace", layout=layout, supervision=supervision), SCHEMA3)
    model = build_model(cfg, SCHEMA3)
    out = model(make_batch(SCHEMA3, ALL_PRESENCE3))
    (out.logits_BC.sum() + out.aux_loss).backward()
    E = model.layers[0].ffn.num_experts
    assert (3 * 8 if layout == "disjoint" else 8) == E
    assert torch.isfinite(model.layers[0].ffn.router.weight_GJD.grad).all()
