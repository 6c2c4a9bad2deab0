"""Gate losses against values computed by hand (plain Python) on a tiny case."""

import math
import statistics

import pytest
import torch

from multimoe.gate_losses import balance_loss, combination_targets, cv_squared, entropy_loss, gate_loss
from multimoe.routers import Routing


def cv2(values):
    m = statistics.fmean(values)
    return statistics.variance(values) / (m * m + 1e-10) if len(values) > 1 else 0.0


# 2 modalities -> combinations 0 = (0, 1), 1 = (0,), 2 = (1,); 3 experts, top-2.
# Tokens: [sample A (full): modality 0, modality 1], [sample B (combination 1): modality 0, modality 1]
LOGITS = [[2.0, 1.0, 0.0], [0.5, 1.5, -1.0], [0.0, 3.0, 1.0], [1.0, 0.2, 0.4]]
IDS = [[0, 1], [1, 0], [1, 2], [0, 2]]
WEIGHTS = [[0.7, 0.3], [0.6, 0.4], [0.8, 0.2], [0.55, 0.45]]
LOAD = [[0.9, 0.6, 0.1], [0.5, 0.8, 0.2], [0.1, 0.95, 0.7], [0.8, 0.3, 0.6]]
MODALITY = [0, 1, 0, 1]
COMBO = [0, 0, 1, 1]


def dense(t):
    row = [0.0, 0.0, 0.0]
    for e, w in zip(IDS[t], WEIGHTS[t]):
        row[e] = w
    return row


def ce(t, target):
    z = LOGITS[t]
    return -(z[target] - math.log(sum(math.exp(v) for v in z)))


def routing():
    return Routing(torch.tensor(WEIGHTS), torch.tensor(IDS), torch.tensor(LOGITS), torch.tensor(LOAD))


def run(supervision, exclude="own"):
    return gate_loss(
        routing(),
        torch.tensor(COMBO),
        torch.tensor(MODALITY),
        num_modalities=2,
        supervision=supervision,
        exclude=exclude,
        targets_S=combination_targets(3, 3, "identity"),
    ).item()


def full_part():
    # generalization: per modality, the full-modality tokens (t=0 for modality 0, t=1 for modality 1)
    return sum(cv2(dense(t)) + cv2(LOAD[t]) for t in (0, 1))


def test_balance_only():
    # per modality over all its tokens: importance = Σ weights, load = Σ load
    expected = 0.0
    for tokens in ((0, 2), (1, 3)):
        imp = [sum(dense(t)[e] for t in tokens) for e in range(3)]
        load = [sum(LOAD[t][e] for t in tokens) for e in range(3)]
        expected += cv2(imp) + cv2(load)
    assert run("balance") == pytest.approx(expected, rel=1e-5)


def test_flexmoe_paper_exclusion():
    # partial tokens t=2 (modality 0) and t=3 (modality 1), combination 1 -> target expert 1
    spec = 2 * (ce(2, 1) + ce(3, 1)) / 2  # M x mean CE
    own = sum(cv2([dense(t)[0], dense(t)[2]]) + cv2([LOAD[t][0], LOAD[t][2]]) for t in (2, 3))  # drop expert 1
    assert run("combination", "own") == pytest.approx(full_part() + spec + own, rel=1e-5)


def test_own_exclusion_is_the_default_and_one_partial_token_is_its_own_mean():
    default = gate_loss(routing(), torch.tensor(COMBO), torch.tensor(MODALITY), 2, "combination",
                        targets_S=combination_targets(3, 3, "identity")).item()  # fmt: skip
    assert default == run("combination", "own")
    # tokens 0, 1 full; token 2 alone partial (combination 1 -> expert 1), token 3 full: the CE term is M * ce(2, 1) / 1
    combo = torch.tensor([0, 0, 1, 0])
    got = gate_loss(routing(), combo, torch.tensor(MODALITY), 2, "combination", "own",
                    combination_targets(3, 3, "identity")).item()  # fmt: skip
    full = 0.0
    for tokens in ((0,), (1, 3)):  # full tokens by modality
        full += cv2([sum(dense(t)[e] for t in tokens) for e in range(3)])
        full += cv2([sum(LOAD[t][e] for t in tokens) for e in range(3)])
    own = cv2([dense(2)[0], dense(2)[2]]) + cv2([LOAD[2][0], LOAD[2][2]])
    assert got == pytest.approx(full + 2 * ce(2, 1) + own, rel=1e-5)


def test_flexmoe_public_code_exclusion():
    spec = 2 * (ce(2, 1) + ce(3, 1)) / 2
    drop0 = sum(cv2([dense(t)[1], dense(t)[2]]) + cv2([LOAD[t][1], LOAD[t][2]]) for t in (2, 3))  # drop expert 0
    assert run("combination", "expert0") == pytest.approx(full_part() + spec + drop0, rel=1e-5)


def test_none_is_zero():
    assert run("none") == 0.0


def test_cv_squared_edge_cases():
    assert cv_squared(torch.zeros(1, 4)).item() == 0.0
    assert cv_squared(torch.tensor([[3.0]])).item() == 0.0
    assert cv_squared(torch.tensor([[1.0, 3.0]])).item() == pytest.approx(2.0 / 4.0)
    # over the last dimension of a 3-d input: rows (1, 3) and (2, 2, ...) of a (1, 2, 2) tensor
    assert cv_squared(torch.tensor([[[1.0, 3.0], [2.0, 2.0]]])).tolist() == [[pytest.approx(0.5), 0.0]]
    keep = torch.tensor([[[True, True], [True, False]]])
    assert cv_squared(torch.tensor([[[1.0, 3.0], [2.0, 5.0]]]), keep).tolist() == [[pytest.approx(0.5), 0.0]]
    assert cv_squared(torch.ones(1, 3, 1)).tolist() == [[0.0, 0.0, 0.0]]  # one entry per row: 0, not NaN
    # a zero mean: Var / (0 + 1e-10), positive (values need not be non-negative for the formula)
    assert cv_squared(torch.tensor([[1.0, -1.0]], dtype=torch.float64)).item() == pytest.approx(2.0 / 1e-10)
    both = torch.tensor([[True, True]])
    assert cv_squared(torch.tensor([[1.0, -1.0]], dtype=torch.float64), both).item() == pytest.approx(2.0 / 1e-10)


def test_identity_map_needs_an_expert_per_combination():
    with pytest.raises(ValueError, match="one expert per combination"):
        combination_targets(63, 16, "identity")
    assert combination_targets(7, 3, "modulo").tolist() == [0, 1, 2, 0, 1, 2, 0]


def softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def H(p):
    return -sum(v * math.log(v) for v in p if v > 0)


def test_entropy_regularizer_by_hand():
    # modality 0: tokens 0, 2; modality 1: tokens 1, 3; full softmax over each token's logits
    pbar = [[(softmax(LOGITS[a])[e] + softmax(LOGITS[b])[e]) / 2 for e in range(3)] for a, b in ((0, 2), (1, 3))]
    mean = [(pbar[0][e] + pbar[1][e]) / 2 for e in range(3)]
    expected = (H(pbar[0]) + H(pbar[1])) / 2 - H(mean)
    assert run("entropy") == pytest.approx(expected, abs=1e-6)  # a difference of entropies: float32 cancels


def test_entropy_regularizer_with_a_modality_of_one_token():
    # modality 0: tokens 0, 1, 2 (mean of three softmaxes); modality 1: token 3 alone (its own softmax, not halved)
    p0 = [sum(softmax(LOGITS[t])[e] for t in (0, 1, 2)) / 3 for e in range(3)]
    p1 = softmax(LOGITS[3])
    mean = [(p0[e] + p1[e]) / 2 for e in range(3)]
    expected = (H(p0) + H(p1)) / 2 - H(mean)
    got = entropy_loss(routing(), torch.tensor([0, 0, 0, 1]), num_modalities=2).item()
    assert got == pytest.approx(expected, abs=1e-6)


def test_disjoint_pools_restrict_the_balance():
    pool_ME = torch.tensor([[True, True, False], [False, True, True]])
    loss = gate_loss(routing(), torch.tensor(COMBO), torch.tensor(MODALITY), 2, "balance", pool_ME=pool_ME).item()
    expected = 0.0
    for tokens, keep in (((0, 2), (0, 1)), ((1, 3), (1, 2))):
        imp = [sum(dense(t)[e] for t in tokens) for e in keep]
        load = [sum(LOAD[t][e] for t in tokens) for e in keep]
        expected += cv2(imp) + cv2(load)
    assert loss == pytest.approx(expected, rel=1e-5)


def _published_form(routing, combo_T, modality_T, M, exclude, targets_C):
    """Flex-MoE's combination loss as separate masked calls (the form of the published per-modality code)."""

    def masked(keep_T):
        k = keep_T.to(routing.weights_TK.dtype)[:, None]
        return Routing(routing.weights_TK * k, routing.ids_TK, routing.logits_TE, routing.load_TE * k)

    full_T, E = combo_T == 0, routing.logits_TE.shape[1]
    partial_T = ~full_T
    loss = balance_loss(masked(full_T), modality_T, M).sum()
    ce_T = torch.nn.functional.cross_entropy(routing.logits_TE, targets_C[combo_T], reduction="none")
    loss = loss + M * (ce_T * partial_T).sum() / partial_T.sum().clamp(min=1)
    if exclude == "expert0":
        keep_E = torch.arange(E) != 0
        return loss + balance_loss(masked(partial_T), modality_T, M, keep_E[None, :]).sum()
    C = targets_C.shape[0]
    group_T = modality_T * C + combo_T
    keep_GE = torch.arange(E)[None, :] != targets_C.repeat(M)[:, None]
    per_group = balance_loss(masked(partial_T), group_T, M * C, keep_GE)
    has_MC = (torch.bincount(group_T[partial_T], minlength=M * C) > 0).view(M, C).to(per_group.dtype)
    return loss + ((per_group.view(M, C) * has_MC).sum(dim=1) / has_MC.sum(dim=1).clamp(min=1)).sum()


@pytest.mark.parametrize("exclude", ["own", "expert0"])
def test_combination_loss_equals_the_published_per_call_form(exclude):
    """The one-pass grouped computation against separate masked calls: values and gradients."""
    g = torch.Generator().manual_seed(0)
    M, T, E, K = 3, 96, 8, 2
    C = (1 << M) - 1
    logits = torch.randn(T, E, generator=g, requires_grad=True)
    load = torch.rand(T, E, generator=g, requires_grad=True)
    top, ids = logits.topk(K, dim=1)
    modality_T = torch.arange(T) % M
    combo_T = torch.randint(0, C, (T // M,), generator=g).repeat_interleave(M)
    combo_T[:M] = 0  # at least one full sample
    targets = combination_targets(C, E, "identity")
    routing_ = Routing(top.softmax(1), ids, logits, load)
    new = gate_loss(routing_, combo_T, modality_T, M, "combination", exclude, targets)
    old = _published_form(routing_, combo_T, modality_T, M, exclude, targets)
    torch.testing.assert_close(new, old, atol=1e-6, rtol=1e-6)
    grads_new = torch.autograd.grad(new, (logits, load), retain_graph=True)
    grads_old = torch.autograd.grad(old, (logits, load))
    for a, b in zip(grads_new, grads_old):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_cv_squared_by_hand_per_row_and_with_a_keep_mask():
    v = torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.0, 8.0]])
    # row 0: mean 2, unbiased variance 1 -> 0.25; row 1: mean 4, variance 12 -> 0.75
    torch.testing.assert_close(cv_squared(v), torch.tensor([0.25, 0.75]))
    keep = torch.tensor([[True, True, False], [True, False, False]])
    # row 0 over (1, 2): mean 1.5, variance 0.5 -> 0.5 / 2.25; row 1 keeps one entry -> 0
    torch.testing.assert_close(cv_squared(v, keep), torch.tensor([0.5 / 2.25, 0.0]))
    assert cv_squared(torch.ones(2, 3, 1)).shape == (2, 3)  # over the last dimension only
