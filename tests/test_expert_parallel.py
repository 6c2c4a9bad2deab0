"""Expert parallelism (multimoe/expert_parallel.py): expert ranges by hand, then 2 gloo processes whose exchanged
layer equals the one-process engine (outputs and gradients, 1e-5) and whose sharded training run ends with the
weights of one process."""

import pytest
import ranks
import torch
import yaml
from conftest import tiny_config
from ranks import run_ranks
from safetensors.torch import load_file

from multimoe.config import GateLossConfig
from multimoe.expert_parallel import ExpertShards, expert_ranges
from multimoe.moe import MoE
from multimoe.routers import SoftmaxTopK
from multimoe.train import train


def test_expert_ranges_are_contiguous_blocks_differing_by_at_most_one():
    assert expert_ranges(5, 2) == [(0, 3), (3, 5)]
    assert expert_ranges(16, 3) == [(0, 6), (6, 11), (11, 16)]
    assert expert_ranges(2, 2) == [(0, 1), (1, 2)]


def test_two_ranks_exchange_tokens_and_equal_the_one_process_engine():
    """Skewed routing with an expert that gets no token, every token on one rank's experts, a rank without tokens,
    and a capacity: outputs and the gradients of tokens, gates and expert shards equal the engine's (1e-5)."""
    assert run_ranks(ranks.expert_parallel_layer) == [0, 0]


def test_two_ranks_with_sharded_experts_train_the_weights_of_one(tmp_path):
    """ExpertShards on an MoE layer (router replicated) against the whole layer, full <-> local model and optimizer
    state; then ``model.moe.expert_parallel=true`` on 2 ranks ends with one process's weights (rank 0 writes the
    whole model)."""
    one = train(tiny_config(tmp_path / "one", *EQUAL))
    config = yaml.safe_load((one.run_dir / "config.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert run_ranks(ranks.expert_parallel_model, str(tmp_path), timeout=120) == [0, 0]
    (run,) = (tmp_path / "ep").iterdir()
    expected, got = load_file(one.run_dir / "best.safetensors"), load_file(run / "best.safetensors")
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-5, msg=name)


# as tests/test_distributed.py's EQUAL: no dropout, a plain router, no gate loss (gate losses are per rank)
EQUAL = ["data.synthetic.samples=120", "train.batch_size=31", "train.eval_batch_size=33", "train.epochs=2",
         "model.moe.router.kind=softmax_topk", "model.moe.num_experts=7", "train.gate_loss_weight=0", "train.threads=1",
         "train.select=loss"]  # fmt: skip


def test_more_ranks_than_experts_is_refused():
    layer = MoE(8, 12, SoftmaxTopK(8, 1, 1), GateLossConfig(supervision="none"))
    with pytest.raises(ValueError, match="1 experts cannot be sharded over 2 ranks"):
        ExpertShards(layer, 0, 2)
