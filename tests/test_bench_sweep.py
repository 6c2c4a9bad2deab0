"""Sweep files (multimoe/bench/sweep.py): every cell must load before anything runs; errors name the problem."""

import pytest

from multimoe.bench import load_sweep
from multimoe.config import ConfigError


def test_sweep_errors_name_the_problem(tmp_path, sweep_file):
    bad = tmp_path / "bad.yaml"
    bad.write_text(sweep_file.read_text().replace("train.epochs: 2", "train.epochz: 2"))
    with pytest.raises(ConfigError, match="unknown config key train.epochz"):
        load_sweep(bad)
    bad.write_text(sweep_file.read_text().replace("reference: flexmoe", "reference: nope"))
    with pytest.raises(ConfigError, match="reference 'nope'"):
        load_sweep(bad)


def test_skip_entries_plan_fewer_cells_and_errors_name_the_entry(tmp_path, sweep_file):
    text = sweep_file.read_text().replace(
        'data.missing: "mcar:0.3"}', 'data.missing: "mcar:0.3"}\n  - {data.name: synthetic, data.missing: "mcar:0.6"}'
    )
    path = tmp_path / "skip.yaml"
    path.write_text(text + 'skip:\n  - {method: flexmoe, where: {data.missing: "mcar:0.6"}, reason: cut for time}\n')
    sweep = load_sweep(path)
    assert len(sweep.cells()) == 8  # 2 methods x 2 points x 2 seeds
    skipped = [c for c in sweep.cells() if sweep.skip_reason(c)]
    assert [(c["method"], c["point"]["data.missing"], c["seed"]) for c in skipped] == [
        ("flexmoe", "mcar:0.6", 0), ("flexmoe", "mcar:0.6", 1)
    ]  # fmt: skip
    assert {sweep.skip_reason(c) for c in skipped} == {"cut for time"}
    assert [c["key"] for c in sweep.planned()] == [c["key"] for c in sweep.cells() if c not in skipped]
    for entry, message in [
        ("{method: nope, reason: x}", "skip entry 1 names the method 'nope'"),
        ("{method: [logreg], where: {data.missing: mcar:0.6}}", "skip entry 1 needs a 'reason'"),
        ('{method: logreg, where: {data.missing: "mcar:0.9"}, reason: x}', "skip entry 1 .* matches no cell"),
        ("{methods: logreg, reason: x}", "skip entry 1 needs 'method'"),
    ]:
        path.write_text(text + f"skip:\n  - {entry}\n")
        with pytest.raises(ConfigError, match=message):
            load_sweep(path)
