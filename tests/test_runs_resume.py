"""Resume: a run killed at any moment (SIGKILL included) continues from its last completed epoch and, on CPU with
the same seed, ends with exactly the metrics of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config

from multimoe.cli import main
from multimoe.config import ConfigError, replace, to_dict
from multimoe.registry import load_config
from multimoe.runs import resume
from multimoe.runs.folder import RunFolder
from multimoe.train import train

TRAIN = sys.modules["multimoe.train"]  # the package exports the function `train` under the module's name


class Killed(BaseException):
    """Stands for a kill at a chosen point (BaseException: no `except Exception` in the library catches it)."""


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def epochs_of(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(s).items() if k != "seconds"} for s in lines]


def only_run(folder: Path) -> Path:
    (run_dir,) = [p for p in folder.iterdir() if p.is_dir()]
    return run_dir


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 4-epoch run (one CPU thread, as the resumed runs)."""
    threads = torch.get_num_threads()
    try:
        return train(tiny_config(tmp_path_factory.mktemp("reference"), "train.epochs=4", "train.threads=1"))
    finally:
        torch.set_num_threads(threads)


def resumed(folder: Path):
    return train(
        replace(tiny_config(folder, "train.epochs=4", "train.threads=1"), {"train": {"resume": str(only_run(folder))}})
    )


def kill_at(monkeypatch, owner, name: str, when) -> None:
    """Make ``owner.name`` raise Killed instead of running on the first call for which ``when(*args)`` is true."""
    real = getattr(owner, name)

    def wrapper(*args, **kw):
        if when(*args, **kw):
            raise Killed
        return real(*args, **kw)

    monkeypatch.setattr(owner, name, wrapper)


SCENARIOS = {
    # after epoch 2's metric lines, before its training state
    "before the state": (resume, "save_progress", lambda folder, m, o, progress, meta: progress.epoch == 2),
    # after the state of an improved epoch (not the first), before its best checkpoint
    "before the best checkpoint": (TRAIN, "save_checkpoint", lambda path, model, meta: meta["epoch"] >= 2),
    # after the last epoch, before the summary
    "before the summary": (TRAIN, "load_checkpoint", lambda *a, **kw: True),
}


@pytest.mark.parametrize("point", list(SCENARIOS))
def test_kill_at_each_point_then_resume_matches_uninterrupted(tmp_path, monkeypatch, reference, point):
    owner, name, when = SCENARIOS[point]
    with monkeypatch.context() as patch:
        kill_at(patch, owner, name, when)
        with pytest.raises(Killed):
            train(tiny_config(tmp_path, "train.epochs=4", "train.threads=1"))
    run_dir = only_run(tmp_path)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')  # a line the kill cut short
    result = resumed(tmp_path)
    assert result.run_dir == run_dir
    assert result.test == reference.test and result.val == reference.val
    assert result.best_epoch == reference.best_epoch
    assert epochs_of(run_dir) == epochs_of(reference.run_dir)  # each epoch once, identical
    assert not (run_dir / RunFolder.STATE).exists()  # removed once the summary is written


def test_early_stopped_run_killed_before_its_summary_does_not_train_on(tmp_path, monkeypatch):
    over = ("train.epochs=8", "train.patience=1", "train.threads=1")
    stopped = train(tiny_config(tmp_path / "reference", *over))
    assert stopped.summary["epochs_run"] < 8  # early stopping fired
    with monkeypatch.context() as patch:
        kill_at(patch, TRAIN, "load_checkpoint", lambda *a, **kw: True)
        with pytest.raises(Killed):
            train(tiny_config(tmp_path / "killed", *over))
    result = train(tiny_config(tmp_path / "killed", *over, f"train.resume={only_run(tmp_path / 'killed')}"))
    assert result.summary["epochs_run"] == stopped.summary["epochs_run"] and result.test == stopped.test
    assert epochs_of(result.run_dir) == epochs_of(stopped.run_dir)


def start(tmp_path: Path, *args: str, epochs: int = 4) -> subprocess.Popen:
    """`multimoe train` on the reference's config in a process of its own (writing under tmp_path/killed)."""
    config = tmp_path / "tiny.yaml"
    if not config.exists():
        tmp_path.mkdir(parents=True, exist_ok=True)
        cfg = tiny_config(tmp_path / "killed", f"train.epochs={epochs}", "train.threads=1")
        config.write_text(yaml.safe_dump(to_dict(cfg)))
    cmd = [sys.executable, "-m", "multimoe", "train", str(config), *args]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_mid_training_then_resume_ends_with_the_same_metrics(tmp_path, reference, capsys):
    proc = start(tmp_path)
    metrics = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        found = list((tmp_path / "killed").glob("*/metrics.jsonl"))
        if found and found[0].read_text().count("\n") >= 1:  # epoch 1 of 4 done: kill inside the next ones
            metrics = found[0]
            break
        time.sleep(0.01)
    assert metrics is not None and proc.poll() is None, "the run should still be training when it is killed"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    run_dir = metrics.parent
    assert not (run_dir / "summary.json").exists()
    assert main(["train", "--resume", str(run_dir)]) == 0  # with the run's own config.yaml, as a user would
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["test"] == {k: reference.test["overall"][k] for k in ("accuracy", "f1", "auc", "n")}
    assert epochs_of(run_dir) == epochs_of(reference.run_dir)


@pytest.mark.slow
def test_repeated_sigkills_at_random_moments_then_resume(tmp_path):
    """Kill, resume, kill again: in the first epoch, then at a random moment after each second epoch (inside
    training steps, metric writes or checkpoint writes), then let the last resume finish."""
    import random

    reference = train(tiny_config(tmp_path / "reference", "train.epochs=12", "train.threads=1"))
    epoch_seconds = max(json.loads(s)["seconds"] for s in (reference.run_dir / "metrics.jsonl").open())
    rng = random.Random(0)
    seen = []
    for target in (0, 2, 4, 6, 8, 10, None):
        runs = list((tmp_path / "killed").glob("*/config.yaml"))
        proc = start(tmp_path, *(["--resume", str(runs[0].parent)] if runs else []), epochs=12)
        if target is None:
            assert proc.wait(timeout=300) == 0
            break
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            found = list((tmp_path / "killed").glob("*/metrics.jsonl"))
            if found and len(found[0].read_text().splitlines()) >= target:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 1.5 * epoch_seconds))
        assert proc.poll() is None, "the run should still be training when it is killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        found = list((tmp_path / "killed").glob("*/metrics.jsonl"))
        seen.append(found[0].read_text().count("\n") if found else 0)
    run_dir = only_run(tmp_path / "killed")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"] == reference.test and summary["val"] == reference.val
    assert epochs_of(run_dir) == epochs_of(reference.run_dir)
    print(f"killed with {seen} metric lines on disk; resumed to the same results")


def test_finished_run_reports_its_results_without_training(reference, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in reference.run_dir.iterdir()}
    cfg = load_config(reference.run_dir / "config.yaml", [f"train.resume={reference.run_dir}"])
    result = train(cfg)
    assert result.test == reference.test and result.best_epoch == reference.best_epoch
    assert {p.name: p.stat().st_mtime_ns for p in reference.run_dir.iterdir()} == before
    assert "already finished" in capsys.readouterr().err


def test_resume_with_another_configuration_is_refused(reference, capsys):
    assert main(["train", str(reference.run_dir / "config.yaml"), "--resume", str(reference.run_dir), "seed=5"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "seed: 0 vs 5" in err
    with pytest.raises(ConfigError, match=r"cannot resume .*\(model.dim: 16 vs 32"):
        train(
            replace(
                load_config(reference.run_dir / "config.yaml"), ["model.dim=32", f"train.resume={reference.run_dir}"]
            )
        )


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "CONFIG" in capsys.readouterr().err
