import pytest
import torch

from multimoe.dropout import Dropout, drop


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_keeps_the_expected_share_and_scale(p):
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = drop(x, p)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert abs(y.mean().item() - 1.0) < 0.02  # unbiased in expectation


def test_dropout_is_identity_in_eval_and_seeded_in_training():
    m = Dropout(0.5)
    x = torch.randn(100, requires_grad=True)
    assert m.eval()(x) is x
    m.train()
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(1)
    b = m(x)
    assert torch.equal(a, b)
    a.sum().backward()
    torch.testing.assert_close(x.grad, (a != 0).float() * 2.0)
    assert torch.equal(drop(x, 1.0), torch.zeros_like(x))
