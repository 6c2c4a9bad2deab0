"""MoE-Retriever (multimoe/retriever.py, configs/moe_retriever.yaml) and the training pools it draws supporting
groups from (multimoe/pools.py): training rows only, supporting groups as published, the retriever trained."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_confsmoe import pool_data
from test_model import ALL_PRESENCE3, SCHEMA3, make_batch

from multimoe.config import ModelConfig
from multimoe.data.prepare import prepare
from multimoe.data.table import build_table
from multimoe.model import build_model
from multimoe.pools import TrainingPool, draw_support, keeps_training_rows
from multimoe.registry import load_config
from multimoe.retriever import MoERetriever, RestrictedNoisyTopK
from multimoe.train import train

CONFIGS = Path(__file__).parents[1] / "configs"
TOY = ["model.dim=8", "model.tokens=2", "model.heads=2", "model.dense_hidden=8", "model.retriever.hidden=8",
       "model.retriever.candidates=2", "model.retriever.shared=2", "model.retriever.top_k=2"]  # fmt: skip


def small_retriever(*overrides: str, pool_rows: int = 7) -> ModelConfig:
    """configs/moe_retriever.yaml at toy widths, retrieving from the first step (no warm-up)."""
    cfg = load_config(CONFIGS / "moe_retriever.yaml", [*TOY, "model.retriever.warmup_epochs=0", *overrides]).model
    cfg.pool_rows = pool_rows
    return cfg


def retriever_model(*overrides: str) -> MoERetriever:
    model = build_model(small_retriever(*overrides), SCHEMA3)
    model.pool.fill(pool_data(SCHEMA3, ALL_PRESENCE3))
    return model


def test_the_pool_holds_the_training_split_and_no_validation_or_test_row(tmp_path):
    overrides = [f"out_dir={tmp_path}", "data.synthetic.modalities=3", "data.synthetic.features=8",
                 "data.synthetic.samples=240", "data.missing=mcar:0.3", "train.epochs=2", "train.progress=false",
                 "model.retriever.warmup_epochs=1", *TOY]  # fmt: skip
    cfg = load_config(CONFIGS / "moe_retriever.yaml", overrides)
    result = train(cfg)
    assert any("MoE-Retriever retrieved" in note for note in result.summary["notes"])
    splits = prepare(build_table(cfg.data), cfg.data, cfg.seed)
    weights = load_file(result.run_dir / "best.safetensors")
    pool = {k.removeprefix("pool."): v for k, v in weights.items() if k.startswith("pool.")}
    assert torch.equal(pool["present_NM"], splits.train.present_NM)
    for i, m in enumerate(splits.schema.modalities):
        stored = pool[f"values{i}_NF"]
        assert torch.equal(stored, splits.train.values[m] * splits.train.present_NM[:, i : i + 1])
        for other in (splits.val, splits.test):  # no validation or test sample's inputs ever enter the pool
            seen = other.values[m][other.present_NM[:, i]]
            assert not (stored[:, None, :] == seen[None, :, :]).all(dim=2).any()


def test_only_methods_that_draw_training_rows_keep_a_pool():
    assert keeps_training_rows("moe_retriever") and keeps_training_rows("confsmoe")
    assert not keeps_training_rows("fusion") and not keeps_training_rows("i2moe") and not keeps_training_rows("hgb")


def test_a_pool_of_the_wrong_size_is_refused():
    pool = TrainingPool(SCHEMA3, 3)
    with pytest.raises(ValueError, match="holds 3 rows.*has 7"):
        pool.fill(pool_data(SCHEMA3, ALL_PRESENCE3))


# pool presence: rows observing (a, b, c)
POOL_NM = torch.tensor(
    [[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 0, 1], [1, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 0]], dtype=torch.bool
)


def test_supporting_groups_observe_the_target_and_the_whole_observed_set():
    target_C = torch.tensor([0, 1, 2])  # missing a with (b, c); b with (a, c); c with (a, b)
    observed_CM = ~torch.nn.functional.one_hot(target_C, 3).bool()
    draw = draw_support(POOL_NM, target_C, observed_CM, observed_CM.sum(dim=1), "replace", None)
    assert not draw.short_C.any() and draw.supported_C.all()
    for c in range(3):
        rows = draw.rows_CS[c, : int(draw.count_C[c])]
        assert POOL_NM[rows].all(dim=1).all()  # here only the complete rows 0-2 qualify
        assert len(set(rows.tolist())) == len(rows)  # without replacement


def test_too_few_qualifying_rows_are_drawn_again_or_relaxed():
    target_C, observed_CM = torch.tensor([1]), torch.tensor([[True, False, True]])  # b missing, a and c observed
    pool_NM = POOL_NM[[0, 4, 5, 6, 7]]  # only row 0 observes b, a and c; rows 1 (a, b) and 2 (b, c) observe b
    draw = draw_support(pool_NM, target_C, observed_CM, torch.tensor([2]), "replace", None)
    assert draw.short_C.all() and draw.rows_CS[0].tolist() == [0, 0]
    relaxed = draw_support(pool_NM, target_C, observed_CM, torch.tensor([2]), "relax", None)
    assert relaxed.rows_CS[0, 0] == 0 and int(relaxed.rows_CS[0, 1]) in (1, 2)  # then a row sharing most of O
    none = draw_support(pool_NM[[1, 3, 4]], target_C, observed_CM, torch.tensor([2]), "replace", None)
    assert none.supported_C.all() and pool_NM[[1, 3, 4]][none.rows_CS[0]][:, 1].all()  # b observed, O relaxed
    lacking = draw_support(pool_NM[[3, 4]], target_C, observed_CM, torch.tensor([2]), "replace", None)
    assert not lacking.supported_C.any()  # no training row observes b: nothing to retrieve from


def test_the_router_chooses_only_the_missing_modalitys_and_the_shared_experts():
    router = RestrictedNoisyTopK(8, candidates=2, shared=2, top_k=2, num_modalities=3).train()
    modality_T = torch.arange(30) % 3
    routing = router(torch.randn(30, 8), modality_T)
    allowed = [{2 * m, 2 * m + 1, 6, 7} for m in modality_T.tolist()]
    assert all(set(ids) <= a for ids, a in zip(routing.ids_TK.tolist(), allowed))


def test_every_missing_cell_is_retrieved_and_the_retriever_learns():
    model = retriever_model().train()
    out = model(make_batch(SCHEMA3, ALL_PRESENCE3))
    missing_cells = int((~ALL_PRESENCE3).sum())
    assert model.support_counts["cells"] == missing_cells and model.support_counts["unsupported"] == 0
    tokens = out.moe[0].info.modality_T.numel()
    assert tokens == sum(2 * int(p.sum()) * 2 * int((~p).sum()) for p in ALL_PRESENCE3)  # 2|O| inputs of P tokens
    (out.logits_BC.sum() + out.aux_loss).backward()
    assert model.retriever.layer.ffn.w1_EDH.grad.abs().sum() > 0
    assert model.retriever.router.weight_GJD.grad.abs().sum() > 0


def test_its_codes_input_mean_leaves_the_retriever_untrained():
    model = retriever_model("model.retriever.output=input_mean", "train.gate_loss_weight=0").train()
    out = model(make_batch(SCHEMA3, ALL_PRESENCE3))
    out.logits_BC.sum().backward()
    grad = model.retriever.layer.ffn.w1_EDH.grad
    assert grad is None or grad.abs().sum() == 0


def test_warm_up_fills_zeros_then_retrieves():
    model = build_model(small_retriever("model.retriever.warmup_epochs=1", pool_rows=7), SCHEMA3)
    model.pool.fill(pool_data(SCHEMA3, ALL_PRESENCE3))
    assert not model.train().retrieving() and not model.eval().retrieving()
    model.train()(make_batch(SCHEMA3, ALL_PRESENCE3))  # 7 samples: one epoch of this pool
    assert model.retrieving()  # the next training step retrieves
    assert not model.eval().retrieving()  # evaluation too, once a training step has learnt with retrieval
    model.train()(make_batch(SCHEMA3, ALL_PRESENCE3))
    assert model.retrieving() and model.eval().retrieving()


def test_evaluation_draws_are_repeatable():
    model = retriever_model().eval()
    batch = make_batch(SCHEMA3, ALL_PRESENCE3)
    with torch.no_grad():
        assert torch.equal(model(batch).logits_BC, model(batch).logits_BC)
