import pytest
import torch

from multimoe.config import RouterConfig
from multimoe.routers import ROUTERS, build_router


@pytest.mark.parametrize("kind", sorted(ROUTERS))
@pytest.mark.parametrize("training", [True, False])
def test_weights_sum_to_one_and_ids_are_distinct(kind, training):
    router = build_router(RouterConfig(kind=kind, top_k=3), dim=8, num_experts=6).train(training)
    r = router(torch.randn(50, 8))
    assert r.weights_TK.shape == r.ids_TK.shape == (50, 3)
    torch.testing.assert_close(r.weights_TK.sum(1), torch.ones(50))
    assert (r.weights_TK >= 0).all()
    assert all(len(set(row)) == 3 for row in r.ids_TK.tolist())
    assert r.load_TE.shape == (50, 6) and ((r.load_TE >= 0) & (r.load_TE <= 1)).all()


@pytest.mark.parametrize("kind", sorted(ROUTERS))
def test_ids_are_the_top_k_of_the_logits(kind):
    router = build_router(RouterConfig(kind=kind, top_k=2), dim=8, num_experts=5)
    r = router(torch.randn(40, 8))
    expected = r.logits_TE.topk(2, dim=1).indices
    assert torch.equal(r.ids_TK, expected)
    torch.testing.assert_close(r.weights_TK, r.logits_TE.gather(1, r.ids_TK).softmax(1))


def test_noisy_gate_is_noisy_in_training_only():
    router = build_router(RouterConfig(kind="noisy_topk", top_k=2), dim=8, num_experts=5)
    x = torch.randn(20, 8)
    router.train()
    assert not torch.equal(router(x).logits_TE, router(x).logits_TE)
    router.eval()
    torch.testing.assert_close(router(x).logits_TE, x @ router.weight_ED.t())


def test_noisy_load_is_differentiable_in_training():
    router = build_router(RouterConfig(kind="noisy_topk", top_k=2), dim=8, num_experts=5).train()
    r = router(torch.randn(20, 8))
    r.load_TE.sum().backward()
    assert router.noise_ED.grad is not None and router.noise_ED.grad.abs().sum() > 0


def test_top_k_larger_than_experts_is_rejected():
    with pytest.raises(ValueError, match="top_k=5"):
        build_router(RouterConfig(top_k=5), dim=4, num_experts=3)
