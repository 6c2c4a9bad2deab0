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
