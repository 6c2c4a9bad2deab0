"""The results store ``<results>/cells.jsonl``: one JSON line per finished cell, appended by one writer (the bench
process), and each sweep's ``sessions.jsonl`` (wall time, so a killed session still counts)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from multimoe.config import ConfigError
from multimoe.files import append_jsonl, read_jsonl

STORE_VERSION = 2  # 2: keys digest the config layout of multimoe 0.2, epochs count from 1 (benchmarks/migrate_store.py)


def read_cells(path: str | Path, repair: bool = False) -> list[dict]:
    """Finished cells in ``path``. A final line cut short by a kill (no newline) is ignored, and cut off when
    ``repair``; an unreadable complete line is skipped."""
    return read_jsonl(path, repair)


def append_cell(path: str | Path, record: dict) -> None:
    """Append one cell's line in a single write, then fsync: a kill leaves either the whole line or a torn tail."""
    append_jsonl(path, record)


@contextmanager
def writer_lock(results_dir: str | Path) -> Iterator[None]:
    """Hold the store's single-writer lock (``<results_dir>/.cells.lock``, an advisory ``flock`` that the kernel
    drops when its process dies, however it dies) while a bench session runs. A second bench on the same folder ends
    at once with a ConfigError naming the holder's pid instead of running the same cells again and appending beside
    it (its start-up repair of a torn last line could cut the other's line in half). Where ``fcntl`` does not exist
    (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(results_dir) / ".cells.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(
                f"another bench (pid {holder}) is writing {Path(results_dir) / 'cells.jsonl'}: wait for it to end, "
                "or give this one another results folder (--out DIR)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def read_sessions(out_dir: str | Path) -> list[dict]:
    """The sweep's sessions in order, each its last logged line: start time, seconds, cells run, workers."""
    return list({s["started"]: s for s in read_jsonl(Path(out_dir) / "sessions.jsonl")}.values())


def log_session(out_dir: Path, started: float, cells_run: int, jobs: int) -> None:
    """One line per finished cell and one at the end, so a killed session still counts; see read_sessions."""
    record = {"started": started, "seconds": time.time() - started, "cells_run": cells_run, "jobs": jobs}
    append_jsonl(Path(out_dir) / "sessions.jsonl", record)
