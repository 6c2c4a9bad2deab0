"""model.members: K copies of an architecture in one model (multimoe/model.py Ensemble), each trained on its own loss,
predicting the mean of their class probabilities."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from test_model import ALL_PRESENCE3, SCHEMA3, make_batch, small_cfg

from multimoe.config import ConfigError
from multimoe.cost import model_costs
from multimoe.model import Ensemble, build_model, resolve
from multimoe.registry import load_config
from multimoe.train import train, train_step


def ensemble_of(k: int, arch: str = "fusion") -> Ensemble:
    cfg = small_cfg(kind="softmax_topk", supervision="balance")  # no router noise: the forward is a function
    cfg.arch, cfg.dropout, cfg.members = arch, 0.0, k
    cfg, _ = resolve(cfg, SCHEMA3)
    return build_model(cfg, SCHEMA3)


@pytest.mark.parametrize("arch", ["fusion", "late_fusion"])
def test_the_ensemble_predicts_the_mean_of_its_members_probabilities(arch):
    model = ensemble_of(3, arch).eval().requires_grad_(False)
    batch = make_batch(SCHEMA3, ALL_PRESENCE3)
    out = model(batch)
    probs_KBC = torch.stack([m(batch).logits_BC.softmax(dim=1) for m in model.members])
    assert torch.allclose(out.logits_BC.exp(), probs_KBC.mean(dim=0), atol=1e-6)
    assert out.member_logits_KBC.shape == (3, len(ALL_PRESENCE3), SCHEMA3.num_classes)
    # members start from their own draws, not from one copied initialisation
    first, second = (m.head if arch == "fusion" else m.heads.a for m in model.members[:2])
    assert not torch.equal(first.weight, second.weight)
    if arch == "fusion":  # the MoE layers of every member, member by member; router losses averaged
        member_outs = [m(batch) for m in model.members]
        assert len(out.moe) == 3
        assert float(out.aux_loss) == pytest.approx(sum(float(o.aux_loss) for o in member_outs) / 3)


def test_each_member_gets_the_gradient_it_would_get_alone():
    """The step's loss is the sum of the members' own losses (the reported task loss their mean), so each member's
    gradient equals that of the same member trained alone on the batch; a loss on the averaged prediction would
    couple them."""
    model = ensemble_of(2).train()
    alone = [copy.deepcopy(m) for m in model.members]
    t = load_config(None, ["train.gate_loss_weight=0.5"]).train
    batch = make_batch(SCHEMA3, ALL_PRESENCE3.repeat(3, 1))
    task, _ = train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, t)
    losses = []
    for member, solo in zip(model.members, alone):
        solo_task, _ = train_step(solo, torch.optim.SGD(solo.parameters(), lr=0.0), batch, t)
        losses.append(float(solo_task))
        for (name, p), q in zip(member.named_parameters(), solo.parameters()):
            assert p.grad is not None and torch.allclose(p.grad, q.grad, atol=1e-6), name
    assert float(task) == pytest.approx(sum(losses) / 2, rel=1e-6)


def test_costs_count_every_member():
    one, three = ensemble_of(1), ensemble_of(3)
    c1 = model_costs(one, one.cfg, SCHEMA3)
    c3 = model_costs(three, three.cfg, SCHEMA3)
    assert c3["parameters"] == sum(p.numel() for p in three.parameters())
    assert c3["parameters"] == 3 * c1["parameters"] and c3["active_parameters"] == 3 * c1["active_parameters"]
    assert c3["flops_per_sample"] == 3 * c1["flops_per_sample"]
    assert c3["train_flops_per_sample"] == 3 * c1["train_flops_per_sample"]


def test_members_must_be_positive_and_of_a_neural_model():
    with pytest.raises(ConfigError, match=r"model.members=0 must be > 0"):
        load_config(None, ["model.members=0"])
    with pytest.raises(ConfigError, match=r"model.arch=hgb is a scikit-learn baseline"):
        load_config(None, ["model.arch=hgb", "model.members=3"])


def test_an_ensemble_trains_saves_and_reloads_as_one_model(tmp_path):
    """`train` with model.members=2: the run's test metrics come from the averaged probabilities, and the best
    checkpoint reloads into the same predictions (evaluate through the run folder)."""
    from multimoe.evaluate import predict
    from multimoe.runs.reopen import open_run

    result = train(tiny_config(tmp_path, "model.members=2", "train.epochs=2"))
    assert isinstance(result.model, Ensemble) and len(result.model.members) == 2
    pred = predict(result.model, result.splits.test)
    labels = result.splits.test.labels_N.numpy()
    assert result.test["overall"]["accuracy"] == pytest.approx(float((pred.probs_NC.argmax(1) == labels).mean()))
    run = open_run(result.run_dir)
    again = predict(run.model, run.splits.test)
    np.testing.assert_allclose(again.probs_NC, pred.probs_NC, atol=1e-6)
    assert math.isclose(again.loss, F.nll_loss(torch.from_numpy(pred.probs_NC).log(), torch.from_numpy(labels)).item(),
                        rel_tol=1e-5)  # fmt: skip
