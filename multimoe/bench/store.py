"""The results store ``<results>/cells.jsonl``: one JSON line per finished cell, appended by one writer (the bench
process), and each sweep's ``sessions.jsonl`` (wall time, so a killed session still counts)."""

from __future__ import annotations

import time
from pathlib import Path

from multimoe.files import append_jsonl, read_jsonl

STORE_VERSION = 2  # 2: keys digest the config layout of multimoe 0.2, epochs count from 1 (benchmarks/migrate_store.py)


def read_cells(path: str | Path, repair: bool = False) -> list[dict]:
    """Finished cells in ``path``. A final line cut short by a kill (no newline) is ignored, and cut off when
    ``repair``; an unreadable complete line is skipped."""
    return read_jsonl(path, repair)


def append_cell(path: str | Path, record: dict) -> None:
    """Append one cell's line in a single write, then fsync: a kill leaves either the whole line or a torn tail."""
    append_jsonl(path, record)


def read_sessions(out_dir: str | Path) -> list[dict]:
    """The sweep's sessions in order, each its last logged line: start time, seconds, cells run, workers."""
    return list({s["started"]: s for s in read_jsonl(Path(out_dir) / "sessions.jsonl")}.values())


def log_session(out_dir: Path, started: float, cells_run: int, jobs: int) -> None:
    """One line per finished cell and one at the end, so a killed session still counts; see read_sessions."""
    record = {"started": started, "seconds": time.time() - started, "cells_run": cells_run, "jobs": jobs}
    append_jsonl(Path(out_dir) / "sessions.jsonl", record)
