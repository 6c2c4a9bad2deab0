"""The results store (multimoe/bench/store.py): a line cut short by a kill is dropped and repaired."""

import json

from multimoe.bench import append_cell, read_cells


def test_torn_last_line_is_dropped_and_repaired(tmp_path):
    path = tmp_path / "cells.jsonl"
    append_cell(path, {"key": "a", "status": "ok"})
    with open(path, "ab") as f:
        f.write(b'{"key": "b", "sta')  # killed mid-write
    assert [c["key"] for c in read_cells(path)] == ["a"]
    read_cells(path, repair=True)
    append_cell(path, {"key": "c", "status": "ok"})
    assert [c["key"] for c in read_cells(path)] == ["a", "c"]
    assert all(json.loads(line) for line in path.read_text().splitlines())
