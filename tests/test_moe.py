"""The MoE engine against a naive per-token, per-slot reference: outputs and gradients to 1e-5, on the engine and
the reference paths of benchmarks/reference_paths.py, for every router, with random, skewed and empty-expert routing,
dropless and with a capacity factor."""

import pytest
import torch
import torch.nn.functional as F

from benchmarks.reference_paths import PATHS, expert_ffn_path, grouped_supported
from multimoe import moe as moe_mod
from multimoe.config import GateLossConfig
from multimoe.dispatch import expert_capacity, plan_dispatch
from multimoe.gate_losses import combination_targets
from multimoe.moe import MoE, TokenInfo
from multimoe.registry import ROUTERS

TOL = {"atol": 1e-5, "rtol": 1e-5}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def naive(x, ids, weights, w1, b1, w2, b2, capacity=0):
    """Each token through its own copy of each chosen expert's weights; under a capacity each expert keeps its
    first pairs in (slot, token) order."""
    T, K = ids.shape
    keep = torch.ones(T, K, dtype=x.dtype)
    if capacity:
        taken = [0] * w1.shape[0]
        for k in range(K):
            for t in range(T):
                e = int(ids[t, k])
                keep[t, k] = float(taken[e] < capacity)
                taken[e] += 1
    out = torch.zeros_like(x)
    for k in range(K):
        e = ids[:, k]
        h = F.gelu(torch.bmm(x[:, None], w1[e])[:, 0] + b1[e])
        out = out + (keep[:, k] * weights[:, k])[:, None] * (torch.bmm(h[:, None], w2[e])[:, 0] + b2[e])
    return out


def routing(kind, T, E, K, g):
    if kind == "random":
        return torch.rand(T, E, generator=g).topk(K, dim=1).indices
    if kind == "skewed":  # every token's top-1 is expert 0
        rest = torch.rand(T, E - 1, generator=g).topk(K - 1, dim=1).indices + 1
        return torch.cat([torch.zeros(T, 1, dtype=torch.long), rest], dim=1)
    if kind == "empty":  # experts >= K never used
        return torch.arange(K).repeat(T, 1)
    raise ValueError(kind)


def paths_for(D, H):
    x, w1, w2 = torch.zeros(1, D), torch.zeros(1, D, H), torch.zeros(1, H, D)
    return [p for p in PATHS if p != "grouped" or grouped_supported(x, w1, w2)]


def check_against_naive(T, E, K, D, H, kind, path, capacity_factor=0.0, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(E, D, H, generator=g), torch.randn(E, H, generator=g),
              torch.randn(E, H, D, generator=g), torch.randn(E, D, generator=g)]  # fmt: skip
    x = torch.randn(T, D, generator=g)
    ids = routing(kind, T, E, K, g).to(device)
    w = torch.rand(T, K, generator=g).softmax(1)
    leaves = [t.to(device).clone().requires_grad_() for t in (x, w, *params)]
    ref_leaves = [t.double().requires_grad_() for t in (x, w, *params)]
    out, counts = expert_ffn_path(leaves[0], ids, leaves[1], *leaves[2:], capacity_factor=capacity_factor, path=path)
    capacity = expert_capacity(capacity_factor, T, K, E)
    ref = naive(ref_leaves[0], ids.cpu(), ref_leaves[1], *ref_leaves[2:], capacity=capacity)
    torch.testing.assert_close(out.cpu(), ref.float(), **TOL)
    expected = torch.bincount(ids.flatten().cpu(), minlength=E)
    assert counts.tolist() == (expected.clamp(max=capacity) if capacity else expected).tolist()
    upstream = torch.randn(T, D, generator=g)
    out.backward(upstream.to(device))
    ref.backward(upstream.double())
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad.cpu(), b.grad.float(), **TOL)


@pytest.mark.parametrize("dims", [(8, 16), (6, 10)], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("kind", ["random", "skewed", "empty"])
def test_every_path_equals_the_naive_reference(dims, kind, plans):
    for path in paths_for(*dims):
        check_against_naive(37, 5, 2, *dims, kind, path)


@pytest.mark.parametrize("kind", ["random", "skewed"])
@pytest.mark.parametrize("factor", [0.5, 1.0, 100.0])
def test_capacity_factor_drops_pairs_past_the_capacity(kind, factor, plans):
    for path in paths_for(8, 16):
        check_against_naive(29, 4, 2, 8, 16, kind, path, capacity_factor=factor)


def test_grouped_support_and_path_names():
    x = torch.randn(4, 8)
    assert grouped_supported(x, torch.randn(3, 8, 16)) == hasattr(torch, "_grouped_mm")
    assert not grouped_supported(x[:, :6], torch.randn(3, 6, 10))  # not 16-byte aligned
    assert not grouped_supported(x.double(), torch.randn(3, 8, 16).double())
    with pytest.raises(ValueError, match="unknown MoE path"):
        expert_ffn_path(x, torch.zeros(4, 1, dtype=torch.long), torch.ones(4, 1), *[torch.zeros(3, 8, 8)] * 4, path="x")
    with pytest.raises(ValueError, match="grouped path needs"):
        expert_ffn_path(x[:, :6], torch.zeros(4, 1, dtype=torch.long), torch.ones(4, 1), torch.zeros(3, 6, 10),
                        torch.zeros(3, 10), torch.zeros(3, 10, 6), torch.zeros(3, 6), path="grouped")  # fmt: skip


def test_no_tokens():
    x = torch.zeros(0, 8, requires_grad=True)
    params = [torch.randn(3, 8, 16, requires_grad=True), torch.randn(3, 16), torch.randn(3, 16, 8), torch.randn(3, 8)]
    for path in paths_for(8, 16):
        out, counts = expert_ffn_path(x, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2), *params, path=path)
        assert out.shape == (0, 8) and counts.tolist() == [0, 0, 0]
        out.sum().backward()
        assert params[0].grad.abs().sum() == 0


def _moe_module(kind, supervision, M=3, E=8, D=8, H=16, capacity_factor=0.0):
    targets = combination_targets((1 << M) - 1, E, "identity") if supervision == "combination" else None
    router = ROUTERS.build(kind, D, E, 2, "joint", M)
    return MoE(D, H, router, GateLossConfig(supervision=supervision), targets, capacity_factor)


@pytest.mark.parametrize("kind", ROUTERS.names())
@pytest.mark.parametrize("supervision", ["balance", "combination"])
def test_moe_module_equals_the_naive_reference_for_every_router(kind, supervision):
    """The whole layer (router, engine, gate loss): every parameter's gradient matches the naive engine's."""
    M, T, D = 3, 48, 8
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, D, generator=g)
    info = TokenInfo(torch.arange(T) % M, torch.randint(0, (1 << M) - 1, (T,), generator=g), M)
    upstream = torch.randn(T, D, generator=g)

    def run(module, engine):
        module.engine = engine
        module.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same noise for the noisy gate
        out = module(x, info)
        ((out.out_TD * upstream).sum() + out.aux_loss).backward()
        return out.out_TD.detach(), {n: p.grad.clone() for n, p in module.named_parameters()}

    def naive_engine(x_TD, ids_TK, weights_TK, *params, capacity_factor=0.0):
        return naive(x_TD, ids_TK, weights_TK, *params), torch.bincount(ids_TK.flatten(), minlength=8)

    torch.manual_seed(0)
    module = _moe_module(kind, supervision, M, D=D)
    ref_out, ref_grads = run(module, naive_engine)
    for path in paths_for(D, 16):
        engine = lambda *a, path=path, **kw: expert_ffn_path(*a, **kw, path=path)
        out, grads = run(module, engine)
        torch.testing.assert_close(out, ref_out, **TOL)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")


@CUDA
@pytest.mark.parametrize("kind", ["random", "skewed", "empty"])
def test_every_path_equals_the_naive_reference_on_cuda(kind):
    for path in paths_for(8, 16):
        check_against_naive(37, 5, 2, 8, 16, kind, path, device="cuda")
        check_against_naive(29, 4, 2, 8, 16, kind, path, capacity_factor=0.5, device="cuda")


def test_capacity_factor_comes_from_the_config():
    from multimoe.config import ConfigError
    from multimoe.data.dataset import DataSchema
    from multimoe.model import build_model, resolve
    from multimoe.registry import load_config

    schema = DataSchema(("a", "b"), (3, 4), ("x", "y"))
    cfg = load_config(None, ["model.dim=8", "model.tokens=2", "model.heads=2", "model.moe.capacity_factor=1.25"])
    model = build_model(resolve(cfg.model, schema)[0], schema)
    assert model.layers[0].ffn.capacity_factor == 1.25
    with pytest.raises(ConfigError, match="capacity_factor"):
        load_config(None, ["model.moe.capacity_factor=-1"])


@pytest.mark.parametrize("kind", ["random", "skewed", "empty"])
def test_padded_layout_with_overflow_equals_the_naive_reference(kind, plans):
    """Every padding width: all rows in overflow (0), some experts overflowing, none (the largest count)."""
    T, E, K, D, H = 41, 5, 2, 8, 16
    g = torch.Generator().manual_seed(2)
    params = [torch.randn(E, D, H, generator=g), torch.randn(E, H, generator=g),
              torch.randn(E, H, D, generator=g), torch.randn(E, D, generator=g)]  # fmt: skip
    x, w = torch.randn(T, D, generator=g), torch.rand(T, K, generator=g).softmax(1)
    ids = routing(kind, T, E, K, g)
    upstream = torch.randn(T, D, generator=g)
    ref_leaves = [t.double().requires_grad_() for t in (x, w, *params)]
    ref = naive(*ref_leaves[:1], ids, *ref_leaves[1:])
    ref.backward(upstream.double())
    plan = plan_dispatch(ids, E)
    for width in sorted({0, 3, sorted(plan.counts)[E // 2], max(plan.counts)}):
        leaves = [t.clone().requires_grad_() for t in (x, w, *params)]
        out = moe_mod._ExpertFFN.apply(*leaves, plan.padded(width), plan.keep_TK)
        assert len(plan.padded(width).overflow) == sum(n > width for n in plan.counts)
        torch.testing.assert_close(out, ref.float(), **TOL)
        out.backward(upstream)
        for a, b in zip(leaves, ref_leaves):
            torch.testing.assert_close(a.grad, b.grad.float(), **TOL)


@pytest.mark.parametrize("kind", ["random", "skewed", "empty"])
@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0])
def test_dense_engine_for_export_equals_the_naive_reference(kind, factor):
    """The export-friendly engine (every expert on every token, gathered by id) gives the naive reference's outputs
    and the engine's row counts, with and without a capacity."""
    T, E, K, D, H = 37, 5, 2, 8, 16
    g = torch.Generator().manual_seed(1)
    params = [torch.randn(E, D, H, generator=g), torch.randn(E, H, generator=g),
              torch.randn(E, H, D, generator=g), torch.randn(E, D, generator=g)]  # fmt: skip
    x, ids, w = torch.randn(T, D, generator=g), routing(kind, T, E, K, g), torch.rand(T, K, generator=g).softmax(1)
    out, counts = moe_mod.dense_expert_ffn(x, ids, w, *params, capacity_factor=factor)
    capacity = expert_capacity(factor, T, K, E)
    ref = naive(x.double(), ids, w.double(), *[p.double() for p in params], capacity=capacity)
    torch.testing.assert_close(out, ref.float(), **TOL)
    assert counts.tolist() == moe_mod.expert_ffn(x, ids, w, *params, capacity_factor=factor)[1].tolist()
