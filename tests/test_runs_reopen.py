"""Reading a run back (multimoe/runs/reopen.py): runs trained on an in-memory table."""

import pytest
import torch
from conftest import frame_table, tiny_config


def test_run_from_a_dataframe_is_evaluated_with_its_table_and_refused_without(tmp_path):
    from multimoe.config import ConfigError
    from multimoe.registry import load_config
    from multimoe.runs.reopen import evaluate_run
    from multimoe.train import train

    small = ["model.dim=8", "model.tokens=2", "model.heads=2", "model.moe.hidden=8", "train.epochs=1"]
    cfg = load_config("configs/multimoe.yaml", [*small, f"out_dir={tmp_path}", "train.progress=false"])
    table = frame_table()
    result = train(cfg, table=table)
    with pytest.raises(ConfigError, match="in-memory table"):
        evaluate_run(result.run_dir)  # the config alone would rebuild another dataset
    again = evaluate_run(result.run_dir, table=table)
    assert again["test"]["overall"]["accuracy"] == result.test["overall"]["accuracy"]


def test_eval_under_another_protocol_keeps_the_test_rows_and_masks_them_anew(tmp_path):
    from multimoe.data.protocols import apply_protocol
    from multimoe.evaluate import evaluate
    from multimoe.runs.reopen import evaluate_run, open_run
    from multimoe.train import train

    result = train(tiny_config(tmp_path, "data.missing=mcar:0.2", "train.epochs=2"))
    same, other = open_run(result.run_dir), open_run(result.run_dir, ["data.missing=mcar:0.6"])
    assert same.missing == "mcar:0.2" and other.missing == "mcar:0.6"
    rows = same.splits.test.rows_N
    assert (other.splits.test.rows_N == rows).all()  # the same test rows, labels and preprocessed values
    assert torch.equal(other.splits.test.labels_N, same.splits.test.labels_N)
    assert all(
        torch.equal(other.splits.test.values[m], same.splits.test.values[m]) for m in same.splits.schema.modalities
    )
    expected = apply_protocol(same.splits.natural_NM, "mcar:0.6", result.summary["seed"])[rows]
    assert (other.splits.test.present_NM.numpy() == expected).all()  # masked by the other protocol, same seed
    assert (other.splits.train.present_NM == same.splits.train.present_NM).all()  # training data as trained
    assert not torch.equal(other.splits.test.present_NM, same.splits.test.present_NM)
    assert evaluate(same.model, same.splits.test) == result.test  # reopening reproduces the run's own test metrics
    reported = evaluate_run(result.run_dir, ["data.missing=mcar:0.6"])["test"]
    assert reported == evaluate(other.model, other.splits.test)
    assert reported["overall"]["n"] == result.test["overall"]["n"]
