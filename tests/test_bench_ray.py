"""Sweeps on Ray (multimoe/bench/run.py, ``executor="ray"``): a tiny sweep on a local Ray instance of 2 CPUs stores
the cells the local process pool stores, and a restart runs only the cells not yet stored. Skipped without ray."""

import pytest

from multimoe.bench import load_sweep, read_cells, read_sessions, run_sweep
from multimoe.config import ConfigError

ray = pytest.importorskip("ray", reason="the Ray executor needs the ray extra: pip install 'multimoe[ray]'")

# what a cell computes; the rest (wall time, run folder name) differs from run to run
RESULT = ("status", "dataset", "classes", "test", "val", "test_per_size", "test_per_combination", "best_epoch",
          "epochs_run", "parameters", "combinations")  # fmt: skip


def _results(path) -> dict:
    return {c["key"]: {k: c.get(k) for k in RESULT} for c in read_cells(path)}


@pytest.fixture
def local_ray():
    """A local Ray instance of 2 CPUs for the test (run_sweep uses it and leaves it running)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow  # a Ray instance and 6 cells in fresh processes: ~1-2 min on 2 shared cores
def test_ray_sweep_stores_the_local_pools_cells_and_restarts(sweep_file, tmp_path, local_ray):
    """One seed of the tiny sweep (Flex-MoE and a scikit-learn baseline) as Ray tasks: the store equals the local
    pool's; after a restart with one cell dropped from the store, exactly that cell runs again."""
    sweep = load_sweep(sweep_file)
    sweep.seeds = [0]
    local = run_sweep(sweep, tmp_path / "local", jobs=2, progress=False)
    on_ray = run_sweep(sweep, tmp_path / "ray", jobs=2, progress=False, executor="ray")
    assert len(read_cells(on_ray)) == 2 and _results(on_ray) == _results(local)
    lines = on_ray.read_text().splitlines(keepends=True)
    on_ray.write_text(lines[1])
    run_sweep(sweep, tmp_path / "ray", jobs=2, progress=False, executor="ray")
    assert len(read_cells(on_ray)) == 2 and _results(on_ray) == _results(local), "no cell lost or run twice"
    assert [s["cells_run"] for s in read_sessions(tmp_path / "ray" / "tiny")] == [2, 1]
    assert ray.is_initialized(), "an instance the bench did not start is left running"


def test_unknown_executor_is_refused(sweep_file, tmp_path):
    with pytest.raises(ConfigError, match="unknown executor 'dask'; choose one of local, ray"):
        run_sweep(load_sweep(sweep_file), tmp_path, executor="dask")
