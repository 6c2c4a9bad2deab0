"""Files that survive a kill: atomic replacement, and JSON-lines logs appended in one write each.

A kill (SIGKILL included) leaves a replaced file either whole-old or whole-new, and a JSON-lines log either with
or without its last line; a line cut short by a kill is ignored when read (and cut off with ``repair``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` on a temporary file in the same folder, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it a normal file's permissions
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_jsonl(path: str | Path, repair: bool = False) -> list[dict]:
    """The records of a JSON-lines file (none when it does not exist). A final line cut short by a kill (no
    newline) is ignored, and cut off when ``repair``; an unreadable complete line is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1  # bytes up to the last newline
    records = []
    for line in data[:complete].split(b"\n"):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    if repair and complete < len(data):
        with open(path, "r+b") as f:
            f.truncate(complete)
    return records


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one line in a single write, then fsync: a kill leaves either the whole line or a torn tail."""
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    """Replace a JSON-lines file atomically."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
