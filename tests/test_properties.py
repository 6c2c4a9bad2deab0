"""Property-based checks (hypothesis) over random shapes and presence masks.

- The model's forward is finite and shaped right for any number of modalities (1-5), feature sizes, batch sizes
  and presence masks, for every router, layout, fill and encoder.
- The missingness protocols never leave a sample with nothing present, only remove what is there, and drop at
  their stated rate (exactly accounting for the rescued samples).
"""

import math
import typing

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from multimoe.batch import Batch, combination_index
from multimoe.config import RouterConfig
from multimoe.data.dataset import DataSchema
from multimoe.data.protocols import apply_protocol, combination_presence
from multimoe.model import build_model, resolve
from multimoe.registry import ENCODERS, FILLS, ROUTERS, load_config

TABLE_ENCODERS = [n for n, e in ENCODERS.entries.items() if e.kind == "table"]  # model.encoder.kind's choices

LAYOUTS = typing.get_args(typing.get_type_hints(RouterConfig)["layout"])

FAST = settings(max_examples=25, deadline=None)


@st.composite
def model_cases(draw):
    M = draw(st.integers(1, 5))
    features = draw(st.lists(st.integers(1, 12), min_size=M, max_size=M))
    B = draw(st.integers(1, 16))
    combos = draw(st.lists(st.integers(1, (1 << M) - 1), min_size=B, max_size=B))  # non-empty presence bitmasks
    layout = draw(st.sampled_from(LAYOUTS))
    supervision = draw(
        st.sampled_from(["balance", "entropy", "none"] + (["combination"] if layout != "disjoint" else []))
    )
    experts = draw(st.integers(2, 6))
    return {
        "M": M,
        "features": features,
        "present": [[bool(c >> m & 1) for m in range(M)] for c in combos],
        "classes": draw(st.integers(2, 5)),
        "overrides": [
            f"model.moe.router.kind={draw(st.sampled_from(ROUTERS.names()))}",
            f"model.moe.router.layout={layout}",
            f"model.moe.gate_loss.supervision={supervision}",
            f"model.moe.num_experts={experts}",
            f"model.moe.router.top_k={draw(st.integers(1, experts))}",
            f"model.fill={draw(st.sampled_from(FILLS.names()))}",
            f"model.encoder.kind={draw(st.sampled_from(TABLE_ENCODERS))}",
            f"model.encoder.cell_mask={draw(st.booleans())}",
            f"model.ffn={draw(st.sampled_from(['moe', 'moe', 'dense']))}",
            f"model.layers={draw(st.integers(1, 2))}",
        ],
        "training": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


@FAST
@given(model_cases())
def test_forward_is_finite_and_shaped_right(case):
    torch.manual_seed(case["seed"])
    M, present_BM = case["M"], torch.tensor(case["present"])
    schema = DataSchema(
        tuple(f"m{i}" for i in range(M)), tuple(case["features"]), tuple(map(str, range(case["classes"])))
    )
    base = ["model.dim=8", "model.tokens=2", "model.heads=2", "model.moe.hidden=8", "model.dropout=0.1"]
    cfg, _ = resolve(load_config(None, base + case["overrides"]).model, schema)
    model = build_model(cfg, schema).train(case["training"])
    B = present_BM.shape[0]
    inputs, missing = {}, {}
    for m, (name, f) in enumerate(zip(schema.modalities, schema.features)):
        cells = torch.rand(B, f) < 0.2  # missing cells inside observed modalities
        inputs[name] = torch.randn(B, f) * present_BM[:, m : m + 1] * ~cells
        missing[name] = cells & present_BM[:, m : m + 1]
    batch = Batch(inputs, missing, present_BM, torch.randint(0, case["classes"], (B,)), combination_index(present_BM))
    out = model(batch)
    assert out.logits_BC.shape == (B, case["classes"])
    assert torch.isfinite(out.logits_BC).all() and torch.isfinite(out.aux_loss)
    if case["training"]:
        (out.logits_BC.logsumexp(dim=1).mean() + out.aux_loss).backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def expected_drop(natural_NM: np.ndarray, rate: float) -> tuple[float, float]:
    """Mean and variance of the number of dropped (sample, modality) pairs under mcar:rate.

    A sample with k present modalities drops X ~ Binomial(k, rate) of them, and gets one back when X = k."""
    mean = var = 0.0
    for k, rows in zip(*np.unique(natural_NM.sum(axis=1), return_counts=True)):
        x = np.arange(k + 1)
        pmf = np.array([math.comb(k, i) * rate**i * (1 - rate) ** (k - i) for i in x])
        dropped = x - (x == k)
        m = float((pmf * dropped).sum())
        mean += rows * m
        var += rows * float((pmf * dropped**2).sum() - m**2)
    return mean, var


@FAST
@given(
    M=st.integers(1, 6),
    rows=st.integers(1, 3000),
    natural_rate=st.floats(0.0, 0.7),
    rate=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**31),
)
def test_mcar_never_empties_a_sample_and_drops_at_its_rate(M, rows, natural_rate, rate, seed):
    rng = np.random.default_rng(seed)
    natural = rng.random((rows, M)) >= natural_rate
    natural[np.arange(rows), rng.integers(0, M, rows)] = True  # the data never have an empty sample
    present = apply_protocol(natural, f"mcar:{rate}", seed)
    assert present.shape == natural.shape and present.dtype == bool
    assert present.any(axis=1).all()  # never a sample with nothing present
    assert not (present & ~natural).any()  # only removes what the data have
    assert np.array_equal(present, apply_protocol(natural, f"mcar:{rate}", seed))  # a function of the seed
    mean, var = expected_drop(natural, rate)
    dropped = int(natural.sum() - present.sum())
    assert abs(dropped - mean) <= 6 * math.sqrt(var) + 1e-9


@FAST
@given(M=st.integers(1, 6), rows=st.integers(1, 200), seed=st.integers(0, 2**31))
def test_natural_protocol_keeps_the_data_and_combinations_show_one_subset(M, rows, seed):
    rng = np.random.default_rng(seed)
    natural = rng.random((rows, M)) < 0.6
    natural[np.arange(rows), rng.integers(0, M, rows)] = True
    assert np.array_equal(apply_protocol(natural, "natural", seed), natural)
    assert np.array_equal(apply_protocol(natural, "mcar:0", seed), natural)
    combo = tuple(sorted(rng.choice(M, size=rng.integers(1, M + 1), replace=False).tolist()))
    shown, usable = combination_presence(natural, combo)
    assert (shown.sum(axis=1) == len(combo)).all() and shown[:, list(combo)].all()
    assert np.array_equal(usable, natural[:, list(combo)].all(axis=1))
