"""The batched MoE against a naive per-token, per-slot reference: outputs and gradients to 1e-5."""

import pytest
import torch
import torch.nn.functional as F

from multimoe import moe as moe_mod
from multimoe.moe import expert_ffn


def naive(x, ids, weights, w1, b1, w2, b2):
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            out[t] = out[t] + weights[t, k] * (F.gelu(x[t] @ w1[e] + b1[e]) @ w2[e] + b2[e])
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


@pytest.mark.parametrize("dims", [(8, 16), (6, 10)], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("kind", ["random", "skewed", "empty"])
def test_batched_moe_equals_naive_reference(dims, kind):
    D, H = dims
    T, E, K = 37, 5, 2
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(E, D, H, generator=g), torch.randn(E, H, generator=g),
              torch.randn(E, H, D, generator=g), torch.randn(E, D, generator=g)]  # fmt: skip
    x = torch.randn(T, D, generator=g)
    ids = routing(kind, T, E, K, g)
    w = torch.rand(T, K, generator=g).softmax(1)
    leaves = [t.clone().requires_grad_() for t in (x, w, *params)]
    ref_leaves = [t.clone().requires_grad_() for t in (x, w, *params)]
    out, counts = expert_ffn(leaves[0], ids, leaves[1], *leaves[2:])
    ref = naive(ref_leaves[0], ids, ref_leaves[1], *ref_leaves[2:])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert counts.tolist() == torch.bincount(ids.flatten(), minlength=E).tolist()
    upstream = torch.randn(T, D, generator=g)
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)


def test_both_dispatch_paths_are_exercised(monkeypatch):
    D, H, E = 8, 16, 3
    x = torch.randn(4, D)
    w1, w2 = torch.randn(E, D, H), torch.randn(E, H, D)
    assert moe_mod._grouped_ok(x, w1, w2) == moe_mod._HAS_GROUPED_MM
    assert not moe_mod._grouped_ok(x, torch.randn(E, 6, 10), torch.randn(E, 10, 6))
