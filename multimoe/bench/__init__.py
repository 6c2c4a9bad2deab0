"""The benchmark harness: every method on the same data, splits, masks, budget and seeds.

- ``sweep``: a sweep file (methods x grid x seeds), its cells and their keys;
- ``store``: the results store ``cells.jsonl`` and the sweep's session log;
- ``run``: running the cells not yet stored, in worker processes;
- ``stats``: statistics over seeds and paired comparisons; ``render``: tables and plots a person can read.
"""

from multimoe.bench.render import render
from multimoe.bench.run import run_cell, run_sweep
from multimoe.bench.store import append_cell, read_cells, read_sessions
from multimoe.bench.sweep import Sweep, cell_key, config_digest, load_sweep

__all__ = [
    "Sweep",
    "append_cell",
    "cell_key",
    "config_digest",
    "load_sweep",
    "read_cells",
    "read_sessions",
    "render",
    "run_cell",
    "run_sweep",
]
