"""Running sweeps (multimoe/bench/run.py): end to end with a restart, kills lose no finished cell, workers die with
the bench."""

import json
import sys
from pathlib import Path

import pytest

from multimoe.bench import load_sweep, read_cells, read_sessions, render, run_sweep


def test_tiny_sweep_end_to_end_with_restart(sweep_file, tmp_path):
    sweep = load_sweep(sweep_file)
    assert len(sweep.cells()) == 4
    out = tmp_path / "out"
    results = run_sweep(sweep, out, jobs=2, progress=False)
    assert results == out / "cells.jsonl"
    cells = read_cells(results)
    assert len(cells) == 4 and all(c["status"] == "ok" for c in cells)
    assert all(len(c["combinations"]) == 3 for c in cells)  # 2 modalities -> 3 combinations tested once each
    # restart after some cells finished: drop two lines, the rerun runs exactly those two
    lines = results.read_text().splitlines(keepends=True)
    results.write_text("".join(lines[:2]))
    run_sweep(sweep, out, jobs=2, progress=False)
    assert sorted(c["key"] for c in read_cells(results)) == sorted(c["key"] for c in cells)
    assert [s["cells_run"] for s in read_sessions(out / "tiny")] == [4, 2]
    run_sweep(sweep, out, jobs=2, progress=False)  # nothing left to do
    assert read_sessions(out / "tiny")[-1]["cells_run"] == 0
    readme = render(sweep, out, command="multimoe bench tiny.yaml")
    text = readme.read_text()
    assert "| flexmoe |" in text and "| logreg |" in text and "multimoe bench tiny.yaml" in text
    assert (out / "tiny" / "summary.csv").is_file() and (out / "tiny" / "combinations.csv").is_file()
    assert list((out / "tiny" / "plots").glob("*.png"))
    # another sweep sharing the store reuses identical cells and computes only new ones
    other = load_sweep(sweep_file)
    other.name, other.seeds = "other", [0, 1, 2]
    run_sweep(other, out, jobs=2, progress=False)
    assert read_sessions(out / "other")[-1]["cells_run"] == 2


def test_the_bench_never_runs_skipped_cells(sweep_file, tmp_path):
    sweep = load_sweep(sweep_file)
    sweep.skip = [{"methods": ["flexmoe"], "where": {}, "reason": "not today"}]
    results = run_sweep(sweep, tmp_path / "out", jobs=1, progress=False)
    assert sorted((c["method"], c["seed"]) for c in read_cells(results)) == [("logreg", 0), ("logreg", 1)]
    assert read_sessions(tmp_path / "out" / "tiny")[-1]["cells_run"] == 2


def test_killed_bench_loses_no_finished_cell(sweep_file, tmp_path):
    """SIGKILL the whole `multimoe bench` process group once a cell has finished; the restart keeps every finished
    cell, reruns only the others, and the store stays readable line by line."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "multimoe", "bench", str(sweep_file), "--out", str(out), "--jobs", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    store = out / "cells.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (read_cells(store) and read_sessions(out / "tiny")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = read_cells(store)
    assert 1 <= len(finished) < 4, "the kill should land mid-sweep"
    assert all(json.loads(line) for line in store.read_text().splitlines())
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells = read_cells(store)
    assert len({c["key"] for c in cells}) == 4 and len(cells) == 4  # nothing lost, nothing computed twice
    # the killed session's time still counts, up to its last finished cell
    killed, rerun = read_sessions(out / "tiny")
    assert 1 <= killed["cells_run"] <= len(finished) and rerun["cells_run"] == 4 - len(finished)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_workers_die_with_a_killed_bench(sweep_file, tmp_path):
    """Killing only the bench process (not its group) must not leave workers training cells nobody records."""
    import os
    import signal
    import subprocess
    import time

    proc, workers = _busy_bench(sweep_file, tmp_path, subprocess.DEVNULL)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    alive = workers
    while time.time() < deadline and alive:
        time.sleep(0.1)
        alive = [w for w in alive if Path(f"/proc/{w}").exists() and "Z" not in _state(w)]
    for w in alive:  # do not leave them running if the assertion fails
        os.kill(w, signal.SIGKILL)
    assert not alive, "workers outlived the bench"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_ctrl_c_stops_the_bench_at_once(sweep_file, tmp_path):
    """Ctrl-C (SIGINT to the bench's process group) ends the bench within seconds, with exit status 130 and no
    worker left, instead of waiting for the running cell and then starting the queued ones."""
    import os
    import signal
    import subprocess

    proc, workers = _busy_bench(sweep_file, tmp_path, subprocess.PIPE)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the bench was still running 30 s after Ctrl-C")
    assert proc.returncode == 130 and b"the same command resumes" in err
    assert not [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in _state(w)]


def _busy_bench(sweep_file, tmp_path, stderr):
    """A `multimoe bench` (its own process group) whose one worker is inside an endless cell: (process, workers).
    SIGINT starts at its default action, as under a terminal: a test run launched in the background of a
    non-interactive shell inherits it ignored, and Python then installs no KeyboardInterrupt handler."""
    import signal
    import subprocess
    import time

    sweep_file.write_text(sweep_file.read_text().replace("train.epochs: 2", "train.epochs: 100000"))
    cmd = [sys.executable, "-m", "multimoe", "bench", str(sweep_file), "--out", str(tmp_path / "out"), "--jobs", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.time() + 120
    workers: list[int] = []
    while time.time() < deadline and not workers:
        time.sleep(0.1)
        kids = [int(p) for p in children.read_text().split()] if children.exists() else []
        workers = [k for k in kids if b"spawn_main" in _cmdline(k)]  # not the resource tracker
    assert workers, "the bench should have started a worker"
    time.sleep(3)  # the worker is now inside its (endless) cell, not waiting for one
    return proc, workers


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def test_ray_executor_without_ray_says_what_to_install(sweep_file, tmp_path, monkeypatch):
    from multimoe.config import ConfigError

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'multimoe\[ray\]'"):
        run_sweep(load_sweep(sweep_file), tmp_path, progress=False, executor="ray")


def test_a_second_bench_on_the_same_store_ends_with_an_error_naming_the_first(sweep_file, tmp_path):
    """One writer per store: while a bench holds the folder's lock, another `multimoe bench` on it runs no cell and
    ends with one error line naming the holder's pid (exit status 2); once the holder is gone the folder is free."""
    import os
    import subprocess

    from multimoe.bench.store import writer_lock

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "multimoe", "bench", str(sweep_file), "--out", str(out), "--jobs", "1"]
    with writer_lock(out):
        proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"another bench (pid {os.getpid()}) is writing" in errors[0]
    assert read_cells(out / "cells.jsonl") == []
    with writer_lock(out):  # released: the same process takes it again at once
        pass
