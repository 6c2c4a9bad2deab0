"""Data-parallel training (multimoe/distributed.py): shards and loss shares worked out by hand, 2 gloo processes under
torchrun ending with the weights and final line of one process, a dead rank ending the other with a clear error."""

import json
import os
import signal
import subprocess
import sys

import pytest
import ranks
import torch
from conftest import tiny_config
from ranks import free_port, run_ranks
from safetensors.torch import load_file

from multimoe.config import TrainConfig
from multimoe.data.dataset import DataSchema, MultimodalData
from multimoe.distributed import Context, shard
from multimoe.registry import load_config
from multimoe.train import train


def test_shard_cuts_each_global_batch_into_contiguous_chunks():
    # 10 rows, batches of 4, 3 ranks: [0 1 2 3] [4 5 6 7] [8 9] -> chunks of 2/1/1 rows, the last batch 1/1/0
    order = torch.tensor([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    parts = [shard(order, 4, rank, 3) for rank in range(3)]
    assert [[c.tolist() for c in p.chunks] for p in parts] == [
        [[9, 8], [5, 4], [1]],
        [[7], [3], [0]],
        [[6], [2], []],
    ]
    assert [p.batch_size for p in parts] == [2, 1, 1]
    assert [p.short for p in parts] == [False, False, True]
    assert [parts[0].ranks_with_rows(s, 3) for s in range(3)] == [3, 3, 2]
    assert parts[0].rows.tolist() == [9, 8, 5, 4, 1]
    with pytest.raises(ValueError, match="cannot be shared by 3 processes"):
        shard(order, 2, 0, 3)


def _data(labels: list[int]) -> MultimodalData:
    n = len(labels)
    schema = DataSchema(("a",), (2,), ("x", "y"))
    present_NM = torch.ones(n, 1, dtype=torch.bool)
    cells = {"a": torch.zeros(n, 2, dtype=torch.bool)}
    return MultimodalData(
        schema, {"a": torch.zeros(n, 2)}, cells, present_NM, torch.tensor(labels), torch.arange(n).numpy()
    )


def test_shares_weight_each_rank_by_its_part_of_the_batch_denominator():
    """Task shares are each rank's part of the global batch's cross-entropy denominator (rows, or class weights),
    summing to 1 over the ranks at every step; gate shares average over the ranks with rows; a rank without rows
    gets a stand-in row with weight 0."""
    data = _data([0, 1, 1, 0, 1])
    t = TrainConfig(batch_size=3)
    order = torch.arange(5)  # batches [0 1 2] [3 4]: chunks of 2/1 rows, then 1/1
    steps = [list(Context(rank=r, world=2).batches(data, order, t)) for r in range(2)]
    assert [[s.task for _, s in rank] for rank in steps] == [[2 / 3, 1 / 2], [1 / 3, 1 / 2]]  # float64
    assert [[s.gate for _, s in rank] for rank in steps] == [[1 / 2, 1 / 2], [1 / 2, 1 / 2]]
    weight_C = torch.tensor([0.25, 0.75])  # rank 0 holds labels 0, 1 then 0; rank 1 holds 1 then 1
    weighted = [[s.task for _, s in Context(rank=r, world=2).batches(data, order, t, weight_C)] for r in range(2)]
    assert weighted[0] == pytest.approx([1.0 / 1.75, 0.25 / 1.0]) and weighted[1] == pytest.approx([0.75 / 1.75, 0.75])
    lonely = [list(Context(rank=r, world=3).batches(data, order, t)) for r in range(3)]  # last batch: 2 rows, 3 ranks
    assert [len(rank) for rank in lonely] == [2, 2, 2]
    stand_in, share = lonely[2][1]
    assert (share.task, share.gate) == (0.0, 0.0) and len(stand_in.labels_B) == 1
    assert [s.gate for _, s in lonely[0]] == [1 / 3, 1 / 2]


# 156 training rows in batches of 31: chunks of 16 and 15 rows, then a last batch of one row, which rank 1 meets with
# a stand-in row of weight 0; 34 validation and test rows in batches of 33. Binary labels with the public code's
# class weights, so the shares must weight by class. No dropout, a plain softmax router, no gate loss: the weights of
# 2 processes must equal those of one (gate losses are per rank, see distributed.py).
EQUAL = ["data.synthetic.samples=224", "data.synthetic.classes=2", "train.class_weights=code", "train.batch_size=31",
         "train.eval_batch_size=33", "model.moe.router.kind=softmax_topk", "train.gate_loss_weight=0",
         "train.threads=1", "train.select=loss"]  # fmt: skip


def test_two_processes_under_torchrun_train_the_weights_of_one(tmp_path):
    """`torchrun --nproc-per-node 2 -m multimoe train CONFIG` (gloo, 1 thread each, global batch 31) ends with the
    weights, epoch losses and test metrics of one process with batch 31 (CONFIG: the config that run wrote), up to
    float reduction order; rank 0 alone writes the run folder and prints the final line, which adds world_size."""
    one = train(tiny_config(tmp_path / "one", *EQUAL))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "multimoe", "train", str(one.run_dir / "config.yaml"), f"out_dir={tmp_path / 'two'}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in 120 s: {err[-2000:]}")
    assert proc.returncode == 0, err[-3000:]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(lines) == 1, "rank 0 alone prints the final line"
    final = lines[0]
    assert final["world_size"] == 2 and final["best_epoch"] == one.best_epoch
    assert final["test"]["accuracy"] == one.test["overall"]["accuracy"] and final["test"]["n"] == 34
    assert final["test"]["auc"] == pytest.approx(one.test["overall"]["auc"], abs=1e-6)
    runs = list((tmp_path / "two").iterdir())
    assert [r.name for r in runs] == [os.path.basename(final["run_dir"])], "one run folder"
    expected, got = load_file(one.run_dir / "best.safetensors"), load_file(runs[0] / "best.safetensors")
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-5, msg=name)
    metrics = [[json.loads(s) for s in (r / "metrics.jsonl").read_text().splitlines()] for r in (one.run_dir, runs[0])]
    for a, b in zip(*metrics):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-6)  # losses summed over the ranks
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-6)  # gathered predictions
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["world_size"] == 2 and not (runs[0] / "state.safetensors").exists()


def test_a_dead_rank_ends_the_other_with_a_clear_error():
    """Rank 1 dies; rank 0's next collective fails within train.dist_timeout with a DistributedError naming it."""
    assert run_ranks(ranks.dead_rank, timeout=60) == [0, 3]


def test_torchrun_refuses_a_batch_smaller_than_the_processes(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="train.batch_size=3 must be at least the number of processes"):
        train(load_config(None, [f"out_dir={tmp_path}", "train.batch_size=3", "train.threads=1"]))


def test_two_processes_killed_mid_run_resume_to_the_weights_of_one(tmp_path):
    """Epoch 1's state written, every rank stopped in epoch 2, then `train.resume` in 2 processes: the same best
    weights and metric lines as one uninterrupted process (rank 0 read the state and broadcast it)."""
    one = train(tiny_config(tmp_path / "one", *EQUAL, "data.synthetic.samples=120", "train.epochs=3"))
    (tmp_path / "config.yaml").write_text((one.run_dir / "config.yaml").read_text())
    assert run_ranks(ranks.killed_then_resumed, str(tmp_path), timeout=120) == [0, 0]
    (run,) = (tmp_path / "dp").iterdir()
    expected, got = load_file(one.run_dir / "best.safetensors"), load_file(run / "best.safetensors")
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-5, msg=name)
    lines = [[json.loads(s) for s in (r / "metrics.jsonl").read_text().splitlines()] for r in (one.run_dir, run)]
    assert [r["epoch"] for r in lines[1]] == [1, 2, 3]
    for a, b in zip(*lines):
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-6)
