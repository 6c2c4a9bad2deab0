"""Reading a run back (multimoe/runs/reopen.py): runs trained on an in-memory table."""

import pytest
from conftest import frame_table


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
