import typing

import pytest
import torch

from multimoe.config import ConfigError, RouterConfig
from multimoe.registry import ROUTERS

LAYOUTS = typing.get_args(typing.get_type_hints(RouterConfig)["layout"])


def route(kind, layout="joint", top_k=3, experts=6, M=3, T=60, training=True):
    router = ROUTERS.build(kind, 8, experts, top_k, layout, M).train(training)
    modality_T = torch.arange(T) % M
    return router, router(torch.randn(T, 8), modality_T), modality_T


@pytest.mark.parametrize("kind", ROUTERS.names())
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False])
def test_weights_sum_to_one_and_ids_are_distinct(kind, layout, training):
    router, r, _ = route(kind, layout, training=training)
    assert r.weights_TK.shape == r.ids_TK.shape == (60, 3)
    torch.testing.assert_close(r.weights_TK.sum(1), torch.ones(60))
    assert (r.weights_TK >= 0).all()
    assert all(len(set(row)) == 3 for row in r.ids_TK.tolist())
    E = router.num_experts
    assert r.logits_TE.shape == r.load_TE.shape == (60, E)
    assert ((r.load_TE >= 0) & (r.load_TE <= 1)).all()


@pytest.mark.parametrize("kind", ROUTERS.names())
@pytest.mark.parametrize("layout", LAYOUTS)
def test_ids_are_the_top_k_of_the_logits(kind, layout):
    _, r, _ = route(kind, layout, top_k=2)
    assert torch.equal(r.ids_TK, r.logits_TE.topk(2, dim=1).indices)
    torch.testing.assert_close(r.weights_TK, r.logits_TE.gather(1, r.ids_TK).softmax(1))


@pytest.mark.parametrize("kind", ROUTERS.names())
def test_disjoint_layout_keeps_each_modality_in_its_pool(kind):
    router, r, modality_T = route(kind, "disjoint", top_k=2, experts=4, M=3)
    assert router.num_experts == 12
    assert torch.equal(r.ids_TK // 4, modality_T[:, None].expand(-1, 2))
    assert torch.isinf(r.logits_TE[torch.arange(60), (modality_T + 1) % 3 * 4]).all()


def test_per_modality_layout_uses_a_router_per_modality():
    router, _, _ = route("softmax_topk", "per_modality", M=2)
    x = torch.randn(1, 8)
    a = router(x, torch.tensor([0])).logits_TE
    b = router(x, torch.tensor([1])).logits_TE
    torch.testing.assert_close(a, x @ router.weight_GJD[0].t())
    torch.testing.assert_close(b, x @ router.weight_GJD[1].t())


def test_laplace_and_gaussian_scores_are_distances():
    x = torch.randn(5, 8)
    for kind, power in (("laplace", 1), ("gaussian", 2)):
        router = ROUTERS.build(kind, 8, 4, 2)
        dist = torch.cdist(x, router.weight_GJD[0])
        torch.testing.assert_close(router(x, torch.zeros(5, dtype=torch.long)).logits_TE, -(dist**power))


def test_noisy_gate_is_noisy_in_training_only():
    router = ROUTERS.build("noisy_topk", 8, 5, 2)
    x, m = torch.randn(20, 8), torch.zeros(20, dtype=torch.long)
    router.train()
    assert not torch.equal(router(x, m).logits_TE, router(x, m).logits_TE)
    router.eval()
    torch.testing.assert_close(router(x, m).logits_TE, x @ router.weight_GJD[0].t())


def test_noisy_load_is_differentiable_in_training():
    router, r, _ = route("noisy_topk", top_k=2)
    r.load_TE.sum().backward()
    assert router.noise_GJD.grad is not None and router.noise_GJD.grad.abs().sum() > 0


def test_unknown_router_lists_choices():
    with pytest.raises(ConfigError, match="softmax_topk, noisy_topk"):
        ROUTERS.build("hash", 8, 4, 2)


@pytest.mark.parametrize("tokens", [10, 100])  # cdist computes up to 25 rows directly, more with a product
def test_euclidean_distances_for_export_equal_cdist(tokens):
    from multimoe.routers import euclidean

    x, w = torch.randn(tokens, 16), torch.randn(3, 8, 16)
    by_hand = ((x[None, :, None, :] - w[:, None, :, :]) ** 2).sum(-1).sqrt()
    torch.testing.assert_close(euclidean(x, w), by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(euclidean(x, w), torch.cdist(x.expand(3, -1, -1), w), atol=1e-5, rtol=1e-5)
