"""Flex-MoE as its public code behaves (configs/flexmoe-code.yaml): every switch changes what it names and nothing
else, the preset pins the published recipe, and the reproduction sweep differs from it one switch at a time."""

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_config
from torch import nn

from multimoe.bench import load_sweep
from multimoe.bench.sweep import config_digest
from multimoe.config import ADDED_KEYS, Config, TrainConfig, to_dict, with_added_defaults
from multimoe.data.dataset import DataSchema
from multimoe.data.prepare import prepare
from multimoe.data.table import build_table
from multimoe.errors import CheckpointError
from multimoe.gate_losses import _balance_keep
from multimoe.model import Attention, FusionLayer, ModelOutput, build_model, resolve
from multimoe.moe import MoE
from multimoe.registry import ROUTERS, load_config
from multimoe.runs.checkpoint import load_checkpoint, save_checkpoint
from multimoe.train import class_weights, epoch_order, run_epoch, train, train_step, validate

ROOT = Path(__file__).parents[1]
CODE = ROOT / "configs" / "flexmoe-code.yaml"
SWITCHES = {  # the preset's value of every switch; the default (the fixed behaviour) is in Config()
    "model.attn_residual": False,
    "model.attn_out_dropout": True,
    "model.moe.gate_loss.balance_exclude": "expert0",
    "model.moe.grow_experts": "power_of_two",
    "model.moe.init": "fastmoe",
    "train.order_ties": "seeded",
    "train.class_weights": "code",
    "train.carry_val_gate_loss": True,
}


def get(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def set_(tree: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree[part]
    tree[last] = value


def test_preset_pins_every_switch_and_the_published_recipe():
    cfg = load_config(CODE)
    d = to_dict(cfg)
    assert {k: get(d, k) for k in SWITCHES} == SWITCHES
    m, t = cfg.model, cfg.train
    assert (m.dim, m.tokens, m.heads, m.layers, m.dropout, m.ffn, m.fill, m.encoder.kind) == (
        128, 16, 4, 1, 0.5, "moe", "bank", "patch_linear")  # fmt: skip
    assert (m.moe.num_experts, m.moe.hidden, m.moe.router.kind, m.moe.router.layout, m.moe.router.top_k) == (
        16, 256, "noisy_topk", "joint", 4)  # fmt: skip
    assert (m.moe.gate_loss.supervision, m.moe.gate_loss.combination_map, m.moe.capacity_factor) == (
        "combination", "identity", 0.0)  # fmt: skip
    assert (t.epochs, t.warmup_epochs, t.order, t.batch_size, t.optimizer, t.lr, t.weight_decay) == (
        50, 5, "descending", 8, "adam", 1e-4, 0.0)  # fmt: skip
    assert (t.gate_loss_weight, t.select, t.patience, t.grad_clip, t.modality_dropout) == (0.01, "accuracy", 0, 0, 0)
    assert cfg.method == "flexmoe-code"


def test_every_switch_off_is_the_faithful_preset():
    """Defaults are the fixed behaviour: flexmoe-code with every switch at its default is configs/flexmoe.yaml."""
    defaults = to_dict(Config())
    code, faithful = to_dict(load_config(CODE)), to_dict(load_config(ROOT / "configs" / "flexmoe.yaml"))
    for key in SWITCHES:
        assert get(faithful, key) == get(defaults, key) != SWITCHES[key]
        set_(code, key, get(defaults, key))
    code["method"] = faithful["method"]
    assert code == faithful


def test_digest_leaves_out_added_keys_at_their_default():
    """Cells stored before the switches existed keep their keys (results/cells.jsonl)."""
    published = load_sweep(ROOT / "configs" / "sweeps" / "published.yaml")
    assert published.digests[("flexmoe", 0)] == "50f7888db737"  # mfeat mcar:0.3, as stored
    assert published.digests[("flexmoe", 1)] == "92b7e0bd2a70"  # support2 natural
    kinds = {
        "data.split",
        "model.encoder.series",
        "model.encoder.image",
        "model.encoder.text",
        "model.baseline_series",
        "model.baseline_image",
    }  # issue 14's keys (tests/test_kinds_training.py)
    peers = {"data.complete_cases", "model.i2moe", "model.confsmoe", "model.retriever", "model.pool_rows"}  # issue 18
    ours = {"model.members", "model.encoder.periodic", "model.blend", "model.blend_pool"}  # issue 15
    not_switches = {"model.moe.expert_parallel"} | kinds | peers | ours  # added keys that are no public-code switch
    assert set(SWITCHES) - {"model.moe.gate_loss.balance_exclude"} == set(ADDED_KEYS) - not_switches  # the older one
    base = load_config(None)
    for key, value in SWITCHES.items():
        assert config_digest(load_config(None, [f"{key}={json.dumps(value)}"])) != config_digest(base), key


def test_reproduce_sweep_changes_one_switch_per_fix():
    sweep = load_sweep(ROOT / "configs" / "sweeps" / "reproduce.yaml")
    assert sweep.reference == "flexmoe-code" and sweep.seeds == [0, 1, 2, 3, 4] and not sweep.common
    assert [p["data.name"] for p in sweep.grid] == ["mfeat", "support2"]
    configs = {m: to_dict(load_config(spec["preset"], [f"{k}={json.dumps(v)}" for k, v in spec["overrides"].items()]))
               for m, spec in sweep.methods.items()}  # fmt: skip
    code = configs.pop("flexmoe-code")
    fixed = set()
    for method, d in configs.items():
        if method == "flexmoe":
            continue
        changed = [k for k in SWITCHES if get(d, k) != get(code, k)]
        assert len(changed) == 1 and get(d, changed[0]) == get(to_dict(Config()), changed[0]), method
        d["method"] = code["method"]
        assert _differs_only_in(d, code, changed[0]), method
        fixed.add(changed[0])
    # every switch has its row except the carried validation loss, which cannot change a result (test below)
    assert fixed == set(SWITCHES) - {"train.carry_val_gate_loss"}
    for i in range(len(sweep.grid)):  # the all-fixes row is the faithful preset's stored cells
        assert sweep.digests[("flexmoe", i)] == load_sweep(ROOT / "configs/sweeps/published.yaml").digests[
            ("flexmoe", i)]  # fmt: skip


def _differs_only_in(a: dict, b: dict, key: str) -> bool:
    a, b = json.loads(json.dumps(a)), json.loads(json.dumps(b))
    set_(a, key, None)
    set_(b, key, None)
    return a == b


# ---------------------------------------------------------------------------------------------------------------
# attention block


class ZeroFFN(nn.Module):
    def forward(self, x_TD, info):
        return torch.zeros_like(x_TD)


def hand_layer(residual: bool, dropout: float = 0.0) -> FusionLayer:
    """D = 2, one head, v = LN(x), projection = identity + bias [0.5, 0]; the feed-forward adds nothing."""
    layer = FusionLayer(2, 1, dropout, ZeroFFN(), attn_residual=residual)
    with torch.no_grad():
        layer.attn.kv.weight.copy_(torch.tensor([[0.0, 0], [0, 0], [1, 0], [0, 1]]))  # k = 0, v = input
        layer.attn.proj.weight.copy_(torch.eye(2))
        layer.attn.proj.bias.copy_(torch.tensor([0.5, 0.0]))
    return layer


def test_attention_residual_switch_by_hand():
    x = torch.tensor([[[1.0, 3.0]]])  # one sample, one token: LN(x) = [-1, 1] (eps aside), attention a = [-0.5, 1]
    a = torch.tensor([-1.0, 1.0]) / math.sqrt(1 + 1e-5) + torch.tensor([0.5, 0.0])
    kept, _ = hand_layer(True).eval()(x, None)
    lost, _ = hand_layer(False).eval()(x, None)
    torch.testing.assert_close(kept[0, 0], x[0, 0] + a)  # [0.5, 4]: the published residual
    torch.testing.assert_close(lost[0, 0], 2 * a)  # [-1, 2]: a + dropout(a), dropout off in eval


class ConstAttention(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, x):
        return self.a.expand_as(x)


def test_lost_residual_drops_the_second_copy_in_training():
    """Training: a + dropout(a) is a or 3a elementwise (p = 0.5), with the residual x + dropout(a) is x or x + 2a."""
    a = torch.tensor([1.0, -2.0])
    x = torch.randn(64, 3, 2)
    for residual in (False, True):
        layer = hand_layer(residual, dropout=0.5).train()
        layer.attn = ConstAttention(a)
        out, _ = layer(x, None)
        base = x if residual else a.expand_as(x)
        ratio = ((out - base) / a).flatten()
        assert set(ratio.round(decimals=5).tolist()) == {0.0, 2.0}, residual


def test_attention_output_dropout_is_a_second_dropout():
    """One token, one head, identity maps: the probabilities' dropout makes a token 0 or 2v; the output dropout then
    makes each element 0 or twice that (4v)."""
    torch.manual_seed(1)
    v = torch.randn(500, 1, 4)
    ratios = {}
    for out_dropout in (False, True):
        attn = Attention(4, 1, 0.5, out_dropout).train()
        with torch.no_grad():
            attn.kv.weight.copy_(torch.cat([torch.zeros(4, 4), torch.eye(4)]))
            attn.proj.weight.copy_(torch.eye(4))
            attn.proj.bias.zero_()
        ratios[out_dropout] = set((attn(v) / v).round(decimals=4).flatten().tolist())
        assert torch.equal(attn.eval()(v), v)  # nothing in eval
    assert ratios == {False: {0.0, 2.0}, True: {0.0, 4.0}}


# ---------------------------------------------------------------------------------------------------------------
# experts: count and initialisation

SCHEMA6 = DataSchema(tuple("abcdef"), (3,) * 6, ("x", "y"))
SCHEMA5 = DataSchema(tuple("abcde"), (3,) * 5, ("x", "y"))


def moe_cfg(*overrides):
    return load_config(CODE, ["model.dim=8", "model.tokens=1", "model.heads=2", "model.moe.hidden=4", *overrides]).model


def test_expert_count_the_code_needs():
    assert resolve(moe_cfg(), SCHEMA6)[0].moe.num_experts == 64  # 2^6: the code was run with 64 on mfeat
    assert resolve(moe_cfg(), SCHEMA5)[0].moe.num_experts == 32
    assert resolve(moe_cfg("model.moe.grow_experts=combinations"), SCHEMA6)[0].moe.num_experts == 63
    assert resolve(moe_cfg("model.moe.num_experts=63"), SCHEMA6)[0].moe.num_experts == 63  # 63: no crash, kept
    cfg, notes = resolve(moe_cfg(), SCHEMA6)
    assert "using 64 experts" in notes[0]


def test_64_experts_with_the_identity_map():
    """Expert 63 is never a target; the code's balance over partial samples keeps it and drops expert 0."""
    cfg, _ = resolve(moe_cfg(), SCHEMA6)
    moe = build_model(cfg, SCHEMA6).layers[0].ffn
    assert moe.num_experts == 64 and moe.targets_S.tolist() == list(range(63))
    keep = _balance_keep("expert0", 6, 64, moe.targets_S)[:, 0]  # 6 full-sample groups, then 6 partial ones
    assert keep[:6].all() and not keep[6:, 0].any() and keep[6:, 1:].all()


def test_fastmoe_init_rescales_the_same_draws():
    """Experts U(+-1/sqrt(D*H)) with zero biases, gate and noise U(+-1/sqrt(E)); every other parameter of the model
    starts exactly as with the default initialisation."""
    cfg, _ = resolve(moe_cfg(), SCHEMA6)
    models = {}
    for init in ("torch", "fastmoe"):
        torch.manual_seed(0)
        models[init] = dict(build_model(dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, init=init)),
                                        SCHEMA6).named_parameters())  # fmt: skip
    D, H, E = 8, 4, 64
    scale = {"w1_EDH": math.sqrt(1 / H), "w2_EHD": math.sqrt(1 / D), "weight_GJD": math.sqrt(D / E),
             "noise_GJD": math.sqrt(D / E), "b1_EH": 0.0, "b2_ED": 0.0}  # fmt: skip
    for name, p in models["torch"].items():
        q = models["fastmoe"][name]
        last = name.rsplit(".", 1)[-1]
        torch.testing.assert_close(q, p * scale.get(last, 1.0), rtol=1e-6, atol=0)
    ffn = "layers.0.ffn."
    assert models["fastmoe"][ffn + "w1_EDH"].abs().max() <= 1 / math.sqrt(D * H)
    assert models["fastmoe"][ffn + "router.weight_GJD"].abs().max() <= 1 / math.sqrt(E)
    with pytest.raises(ValueError, match="torch or fastmoe"):
        MoE(8, 4, ROUTERS.build("noisy_topk", 8, 4, 2, "joint", 1), moe_cfg().moe.gate_loss, init="xavier")


# ---------------------------------------------------------------------------------------------------------------
# training: class weights, carried validation loss, warm-up order


class Stub(nn.Module):
    """Fixed logits and router loss, one parameter so that a step can run."""

    def __init__(self, logits, aux=0.0):
        super().__init__()
        self.logits, self.aux = logits, aux
        self.b = nn.Parameter(torch.zeros(logits.shape[1]))

    def forward(self, batch):
        return ModelOutput(self.logits + self.b, self.b.sum() * 0 + self.aux, [], None)


def test_code_class_weights_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    batch = SimpleNamespace(labels_B=torch.tensor([0, 1, 1]))
    nll = [math.log1p(math.exp(-2)), math.log1p(math.exp(-1)), math.log(2)]
    weighted = (0.25 * nll[0] + 0.75 * nll[1] + 0.75 * nll[2]) / (0.25 + 0.75 + 0.75)
    for setting, expected in (("code", weighted), ("none", sum(nll) / 3)):
        model = Stub(logits)
        t = TrainConfig(class_weights=setting)
        task, _ = train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), batch, t)
        assert task.item() == pytest.approx(expected, rel=1e-6)
    three = torch.zeros(2, 3)
    assert class_weights(TrainConfig(class_weights="code"), three) is None  # more classes: plain cross-entropy
    assert class_weights(TrainConfig(class_weights="none"), logits) is None


def tiny_setup(tmp_path, *overrides):
    cfg = tiny_config(tmp_path, "model.dropout=0.2", *overrides)
    splits = prepare(build_table(cfg.data), cfg.data, cfg.seed)
    model_cfg, _ = resolve(cfg.model, splits.schema)
    torch.manual_seed(0)
    return cfg, splits, build_model(model_cfg, splits.schema)


def test_carried_validation_loss_changes_the_loss_not_the_step(tmp_path):
    cfg, splits, model = tiny_setup(tmp_path, "train.carry_val_gate_loss=true")
    t = cfg.train
    val, carry = validate(model, splits.val, t, "cpu")
    model.eval()
    with torch.no_grad():  # the validation batches' gate losses, summed by hand
        expected = sum(float(model(b).aux_loss) for b in splits.val.batches(t.eval_batch_size))
    assert carry == pytest.approx(expected, rel=1e-6) and carry > 0
    assert validate(model, splits.val, dataclasses.replace(t, carry_val_gate_loss=False), "cpu")[1] == 0.0

    def one_epoch(c: float):
        clone = build_model(model.cfg, splits.schema)
        clone.load_state_dict(model.state_dict())
        opt = torch.optim.Adam(clone.parameters(), lr=t.lr)
        seen = []

        def check(step, loss, norm):
            seen.append((step, float(loss.detach()), float(norm)))

        torch.manual_seed(5)
        sums = run_epoch(clone, opt, splits.train, torch.arange(len(splits.train)), t, "cpu", check, lambda: None, c)
        return seen, sums, clone.state_dict()

    runs = {c: one_epoch(c) for c in (0.0, carry)}
    (plain, plain_sums, plain_w), (carried, carried_sums, carried_w) = runs[0.0], runs[carry]
    assert carried[0][1] == pytest.approx(plain[0][1] + t.gate_loss_weight * carry, rel=1e-5)  # first step only
    assert [s[1] for s in carried[1:]] == [s[1] for s in plain[1:]]
    assert [s[2] for s in carried] == [s[2] for s in plain]  # the same gradient norms, step for step
    assert all(torch.equal(plain_w[k], carried_w[k]) for k in plain_w)  # and the same weights after the epoch
    assert carried_sums[1] == pytest.approx(plain_sums[1] + carry, rel=1e-5)  # the logged router loss has it
    assert carried_sums[0] == plain_sums[0]


def test_carried_validation_loss_leaves_results_unchanged(tmp_path):
    a = train(tiny_config(tmp_path / "a", "model.dropout=0.2"))
    b = train(tiny_config(tmp_path / "b", "model.dropout=0.2", "train.carry_val_gate_loss=true"))
    assert a.test == b.test and a.val == b.val
    la, lb = ([json.loads(s) for s in (r.run_dir / "metrics.jsonl").open()] for r in (a, b))
    assert [x["val_loss"] for x in la] == [x["val_loss"] for x in lb]
    assert la[0]["gate_loss"] == lb[0]["gate_loss"]  # nothing to carry into the first epoch
    assert all(y["gate_loss"] > x["gate_loss"] for x, y in zip(la[1:], lb[1:]))


def test_seeded_ties_keep_descending_counts():
    n_present = torch.tensor([1, 3, 2, 3, 1, 2, 3, 3, 2, 1, 3, 2])
    seeded = TrainConfig(warmup_epochs=2, order_ties="seeded")
    orders = {s: epoch_order(1, n_present, seeded, seed=s) for s in range(6)}
    for order in orders.values():
        assert sorted(order.tolist()) == list(range(12))  # a permutation
        assert n_present[order].tolist() == sorted(n_present.tolist(), reverse=True)  # counts descending
    assert torch.equal(orders[0], epoch_order(1, n_present, seeded, seed=0))  # reproducible per seed
    assert torch.equal(orders[0], epoch_order(2, n_present, seeded, seed=0))  # one order for the warm-up
    assert len({tuple(o.tolist()) for o in orders.values()}) > 1  # the seed decides the order within counts
    stable = epoch_order(1, n_present, TrainConfig(warmup_epochs=2), seed=0)
    assert any(not torch.equal(o, stable) for o in orders.values())
    asc = epoch_order(1, n_present, dataclasses.replace(seeded, order="ascending"), seed=0)
    assert n_present[asc].tolist() == sorted(n_present.tolist())
    for epoch in (3, 4):  # after the warm-up: the shuffles, unchanged
        assert torch.equal(epoch_order(epoch, n_present, seeded, 0), epoch_order(epoch, n_present, TrainConfig(
            warmup_epochs=2), 0))  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# run folders and checkpoints written before the switches existed


def test_added_keys_absent_from_a_stored_config_read_as_their_defaults():
    old = to_dict(Config())
    for key in ADDED_KEYS:
        *parents, last = key.split(".")
        node = old
        for part in parents:
            node = node[part]
        del node[last]
    assert with_added_defaults(old) == to_dict(Config())
    assert with_added_defaults(old["model"], "model") == to_dict(Config())["model"]
    kept = {**old, "train": {**old["train"], "order_ties": "seeded"}}  # a value it has is kept
    assert with_added_defaults(kept)["train"]["order_ties"] == "seeded"


def test_checkpoint_from_before_the_switches_loads(tmp_path):
    cfg = tiny_config(tmp_path).model
    model = build_model(resolve(cfg, SCHEMA5)[0], SCHEMA5)
    old = to_dict(resolve(cfg, SCHEMA5)[0])
    for key in ADDED_KEYS:
        if key.startswith("model."):
            *parents, last = key.split(".")[1:]
            node = old
            for part in parents:
                node = node[part]
            del node[last]
    save_checkpoint(tmp_path / "old.safetensors", model, {"config": {"model": old}})
    now = to_dict(resolve(cfg, SCHEMA5)[0])
    load_checkpoint(tmp_path / "old.safetensors", model, expect_model_config=now)  # ran the defaults: accepted
    now["attn_residual"] = False
    with pytest.raises(CheckpointError, match="model.attn_residual"):  # it did not run the public code's block
        load_checkpoint(tmp_path / "old.safetensors", model, expect_model_config=now)
