"""Expert parallelism (multimoe/expert_parallel.py): expert ranges by hand, then 2 gloo processes whose exchanged
layer equals the one-process engine (outputs and gradients, 1e-5)."""

import pytest
import ranks
from ranks import run_ranks

from multimoe.config import GateLossConfig
from multimoe.expert_parallel import ExpertShards, expert_ranges
from multimoe.moe import MoE
from multimoe.routers import SoftmaxTopK


def test_expert_ranges_are_contiguous_blocks_differing_by_at_most_one():
    assert expert_ranges(5, 2) == [(0, 3), (3, 5)]
    assert expert_ranges(16, 3) == [(0, 6), (6, 11), (11, 16)]
    assert expert_ranges(2, 2) == [(0, 1), (1, 2)]


def test_two_ranks_exchange_tokens_and_equal_the_one_process_engine():
    """Skewed routing with an expert that gets no token, every token on one rank's experts, a rank without tokens,
    and a capacity: outputs and the gradients of tokens, gates and expert shards equal the engine's (1e-5)."""
    assert run_ranks(ranks.expert_parallel_layer) == [0, 0]


def test_more_ranks_than_experts_is_refused():
    layer = MoE(8, 12, SoftmaxTopK(8, 1, 1), GateLossConfig(supervision="none"))
    with pytest.raises(ValueError, match="1 experts cannot be sharded over 2 ranks"):
        ExpertShards(layer, 0, 2)
