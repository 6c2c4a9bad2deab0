"""Series modalities: multivariate signals, regular (arrays) or irregular (a long table with per-channel gaps).

Spec entries::

    acc:    {kind: series, file: acc.npy, rate: 50, channels: [x, y, z]}   # N x V x U array; NaN: unobserved
    vitals: {kind: series, table: vitals.csv, id: pid, time: t, channel: ch, value: v}   # long format
    vitals: {kind: series, table: vitals.csv, id: pid, time: t, channel: ch, value: v, channels: [hr, sbp],
             steps: 128, row_id: patient}

The long table has one observation per line: the row it belongs to (``id``, matched to the main table's column
``row_id``, default the same name), its time (numbers, or dates), its channel and its value. Each row's distinct
observation times form its time grid (the union over channels, as in mTAND's and FuseMoE's inputs); a channel not
observed at a time is masked there. ``steps`` (U) defaults to the longest grid, capped at ``max_steps``; a longer
grid keeps its last U times (counted in ``truncated_rows``). ``channels``, when given, lists every channel the table
may hold: another channel is an error naming it. A row with no observed value has no series (a missing modality).

``fit`` learns each channel's mean and standard deviation over the training rows' observed values, and the time
scale: the longest time span of a training row, so that training times fall in [0, 1]. Times are relative to each
row's first grid time. Batch: ``x = SeriesInput(values_BVU, times_BU)`` and ``missing_BVU`` (True where channel v has
no observation at step u, padding included; values are 0 there).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from multimoe.data.frames import read_frame
from multimoe.data.kinds.base import (
    KindShape,
    ModalitySource,
    check_entry,
    finite_or_nan,
    frame_column,
    positive_int,
    ranges,
    read_array,
    resolve_path,
)
from multimoe.errors import DataError

MAX_STEPS = 512  # default cap on a long-format row's time grid


class SeriesInput(NamedTuple):
    values_BVU: torch.Tensor  # standardised values, 0 where unobserved
    times_BU: torch.Tensor  # time of each step, relative to the row's first step, in units of the fitted time scale


class SeriesSource(ModalitySource):
    kind = "series"
    row_arrays = ("present_N", "values_NVU", "times_NU")

    def __init__(self, name: str, channels: list[str], steps: int, index=None, where: str = "") -> None:
        super().__init__(name, len(index), index, where)
        self.channels, self.steps = [str(c) for c in channels], steps
        V = len(self.channels)
        self.mean_V, self.std_V = np.zeros(V, dtype=np.float32), np.ones(V, dtype=np.float32)
        self.time_scale = 1.0
        self.truncated_rows = 0
        # dense form (from_array): N x V x U values and N x U times; long form (from_long): observations
        self.values_NVU: np.ndarray | None = None
        self.times_NU: np.ndarray | None = None
        self.ptr: np.ndarray | None = None  # N + 1 offsets into the observations, sorted by (row, time)
        self.obs_time: np.ndarray | None = None
        self.obs_channel: np.ndarray | None = None
        self.obs_value: np.ndarray | None = None
        self.obs_step: np.ndarray | None = None  # each observation's step on its row's grid (< 0: left out)
        self.unmatched_lines = 0  # long-table lines whose id is no row of the table

    # ---- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_array(cls, name: str, values_NVU: np.ndarray, times=None, rate: float | None = None,
                   channels: list[str] | None = None, index=None, where: str = "") -> SeriesSource:  # fmt: skip
        """Regular signals: N x V x U values (NaN: unobserved), times (U,) or (N, U), or a sampling ``rate``."""
        values = np.asarray(values_NVU)
        if values.ndim != 3:
            raise DataError(f"modality '{name}' (series){where}: expected rows x channels x steps, got {values.shape}")
        N, V, U = values.shape
        channels = list(channels) if channels is not None else [str(v) for v in range(V)]
        if len(channels) != V:
            raise DataError(f"modality '{name}' (series){where}: {len(channels)} channel names for {V} channels")
        src = cls(name, channels, U, np.arange(N) if index is None else index, where)
        src.values_NVU = finite_or_nan(values, src.label(), src.row_name)
        if times is None:
            times = np.arange(U, dtype=np.float64) / float(rate or 1.0)
        times = np.asarray(times, dtype=np.float64)
        if times.shape not in ((U,), (N, U)) or not np.isfinite(times).all():
            raise DataError(f"{src.label()}: times must be {U} finite numbers (or one row of them per row)")
        src.times_NU = np.broadcast_to(times, (N, U)) if times.ndim == 1 else times
        src.present_N = ~np.isnan(src.values_NVU).all(axis=(1, 2))
        return src

    @classmethod
    def from_long(cls, name: str, long: pd.DataFrame, ids_N, id: str, time: str, channel: str, value: str,
                  channels: list[str] | None = None, steps: int | None = None, max_steps: int = MAX_STEPS,
                  index=None, where: str = "", row_id: str = "") -> SeriesSource:  # fmt: skip
        """Irregular signals from a long table (one observation per line) matched to rows by ``ids_N``."""
        label = f"modality '{name}' (series){where}"
        for col in (id, time, channel, value):
            if col not in long.columns:
                raise DataError(f"{label}: the series table has no column '{col}'; it has {', '.join(long.columns)}")
        ids_N = pd.Series(list(ids_N))
        index = np.arange(len(ids_N)) if index is None else np.asarray(index)
        if ids_N.isna().any() or ids_N.duplicated().any():
            bad = int(np.flatnonzero(ids_N.isna() | ids_N.duplicated())[0])
            raise DataError(
                f"{label}: row {index[bad]} of the id column '{row_id or id}' is "
                f"{'empty' if pd.isna(ids_N[bad]) else f'the id {ids_N.tolist()[bad]!r} of an earlier row'}; every row "
                "needs "
                "its own id to match its series"
            )
        long = long.loc[long[value].notna()]
        found = pd.unique(long[channel].astype(str))
        if channels is None:
            channels = sorted(found.tolist())
        channels = [str(c) for c in channels]
        unknown = [c for c in found if c not in channels]
        if unknown:
            line = int(np.flatnonzero(long[channel].astype(str).to_numpy() == unknown[0])[0])
            raise DataError(
                f"{label}: channel '{unknown[0]}' (first at data line {long.index[line]}) is not among the channels "
                f"the spec lists ({', '.join(channels)}); add it to 'channels' or drop its lines"
            )
        values = pd.to_numeric(long[value], errors="coerce")
        if values.isna().any():
            line = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise DataError(
                f"{label}: the value column '{value}' holds the text {long[value].iloc[line]!r} at data line "
                f"{long.index[line]}; values must be numbers (leave a cell empty for no observation)"
            )
        times = _times(long[time], label)
        # ids may be read as numbers in one file and text in the other: match them as text
        position = pd.Series(np.arange(len(ids_N)), index=ids_N.astype(str).to_numpy())
        rows = long[id].astype(str).map(position)
        matched = rows.notna().to_numpy()
        rows = rows[matched].to_numpy(dtype=np.int64)
        times, values = times[matched], values.to_numpy(dtype=np.float64)[matched]
        codes = pd.Categorical(long[channel].astype(str)[matched], categories=channels).codes.astype(np.int32)
        order = np.lexsort((times, rows))
        src = cls(name, channels, 1, index, where)
        src.unmatched_lines = int((~matched).sum())
        src.obs_time, src.obs_channel = times[order], codes[order]
        src.obs_value = finite_or_nan(values[order], label, lambda k: f"data line {long.index[k]}")
        src.ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(ids_N)))]).astype(np.int64)
        src.present_N = np.diff(src.ptr) > 0
        src._set_steps(steps, max_steps)
        return src

    @classmethod
    def from_spec(cls, name: str, entry: dict, frame: pd.DataFrame, base_dir: Path | None = None, where: str = ""):
        label = f"modality '{name}' (series){where}"
        if ("file" in entry) == ("table" in entry):
            raise DataError(f"{label} needs exactly one of 'table' (long format) and 'file' (an array)")
        if "file" in entry:
            check_entry(name, cls.kind, entry, ("file",), ("rate", "channels", "key"), where)
            path = resolve_path(entry["file"], base_dir)
            values = read_array(path, entry.get("key"), label)
            if values.ndim != 3 or len(values) != len(frame):
                raise DataError(
                    f"{label}: {path} holds an array of shape {values.shape}; expected (rows, channels, steps) with "
                    f"one row per table row ({len(frame)})"
                )
            rate = entry.get("rate", 1.0)
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0:
                raise DataError(f"{label}: 'rate' (samples per time unit) must be a positive number, got {rate!r}")
            return cls.from_array(name, values, rate=rate, channels=_names(entry, label), index=frame.index,
                                  where=where)  # fmt: skip
        keys = ("table", "id", "time", "channel", "value")
        check_entry(name, cls.kind, entry, keys, ("channels", "steps", "max_steps", "row_id"), where)
        steps = entry.get("steps")
        steps = None if steps is None else positive_int(steps, "steps", name, cls.kind, where)
        max_steps = positive_int(entry.get("max_steps", MAX_STEPS), "max_steps", name, cls.kind, where)
        channels = _names(entry, label)
        row_id = str(entry.get("row_id", entry["id"]))
        ids = frame_column(frame, row_id, name, cls.kind, where)
        path = resolve_path(entry["table"], base_dir)
        return cls.from_long(
            name,
            _read_long(path, label),
            ids.tolist(),
            *(str(entry[k]) for k in keys[1:]),
            channels=channels,
            steps=steps,
            max_steps=max_steps,
            index=frame.index,
            where=where,
            row_id=row_id,
        )

    # ---- the long form's time grids ----------------------------------------------------------------------------

    def _set_steps(self, steps: int | None, max_steps: int) -> None:
        """The grid length U (given, else the longest row's distinct times, at most ``max_steps``) and each
        observation's step on its row's grid; a row with more distinct times keeps its last U."""
        N, K = len(self), len(self.obs_time)
        row_K = np.repeat(np.arange(N), np.diff(self.ptr))
        new_time = np.ones(K, dtype=bool)  # the first observation of each (row, time)
        new_time[1:] = (self.obs_time[1:] != self.obs_time[:-1]) | (row_K[1:] != row_K[:-1])
        distinct_N = np.bincount(row_K[new_time], minlength=N)
        self.steps = steps or max(1, min(max_steps, int(distinct_N.max(initial=1))))
        rank_K = np.cumsum(new_time) - 1  # index of each observation's distinct time, over all rows
        start_N = np.concatenate([[0], np.cumsum(distinct_N)[:-1]])
        step = rank_K - start_N[row_K] - np.maximum(distinct_N[row_K] - self.steps, 0)
        self.obs_step = step.astype(np.int64)  # < 0: before the row's last U times, left out
        self.truncated_rows = int((distinct_N > self.steps).sum())

    def subset(self, rows: np.ndarray) -> SeriesSource:
        rows = np.asarray(rows, dtype=np.int64)
        out = super().subset(rows)
        if self.ptr is not None:
            lengths = np.diff(self.ptr)[rows]
            take = ranges(self.ptr[:-1][rows], lengths)
            for attr in ("obs_time", "obs_channel", "obs_value", "obs_step"):
                setattr(out, attr, getattr(self, attr)[take])
            out.ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return out

    # ---- fit and batches ---------------------------------------------------------------------------------------

    def _long_rows(self, rows: np.ndarray):
        """Observations of ``rows`` inside their kept grids: (position in rows, channel, step, time, value)."""
        lengths = np.diff(self.ptr)[rows]
        take = ranges(self.ptr[:-1][rows], lengths)
        b = np.repeat(np.arange(len(rows)), lengths)
        kept = self.obs_step[take] >= 0
        take, b = take[kept], b[kept]
        return b, self.obs_channel[take], self.obs_step[take], self.obs_time[take], self.obs_value[take]

    def fit(self, rows: np.ndarray, present_N: np.ndarray | None = None) -> SeriesSource:
        rows = np.asarray(rows, dtype=np.int64)
        use = rows[self.present_N[rows] & (True if present_N is None else np.asarray(present_N)[rows])]
        V = len(self.channels)
        if self.ptr is not None:
            b, ch, step, t, v = self._long_rows(use)
            count = np.bincount(ch, minlength=V)
            mean = np.bincount(ch, v, minlength=V) / np.maximum(count, 1)
            var = np.bincount(ch, (v - mean[ch]) ** 2, minlength=V) / np.maximum(count, 1)
            first = np.full(len(use), np.inf)
            np.minimum.at(first, b, t)
            last = np.full(len(use), -np.inf)
            np.maximum.at(last, b, t)
            span = float((last - first).max(initial=0.0)) if len(use) else 0.0
        else:
            X = self.values_NVU[use].astype(np.float64)
            count = (~np.isnan(X)).sum(axis=(0, 2))
            mean = np.where(count > 0, np.nansum(X, axis=(0, 2)) / np.maximum(count, 1), 0.0)
            var = np.nansum((X - mean[None, :, None]) ** 2, axis=(0, 2)) / np.maximum(count, 1)
            times = self.times_NU[use]
            span = float((times[:, -1] - times[:, 0]).max(initial=0.0)) if len(use) else 0.0
        std = np.sqrt(var)
        self.mean_V = mean.astype(np.float32)
        self.std_V = np.where(std > 1e-12, std, 1.0).astype(np.float32)
        self.time_scale = span if span > 0 else 1.0
        return self

    def input_shape(self) -> KindShape:
        return KindShape(self.kind, (len(self.channels), self.steps))

    def fitted(self) -> dict:
        return {"channels": self.channels, "steps": self.steps, "mean": self.mean_V.tolist(),
                "std": self.std_V.tolist(), "time_scale": self.time_scale}  # fmt: skip

    def load_fitted(self, state: dict) -> SeriesSource:
        self.mean_V = np.asarray(state["mean"], dtype=np.float32)
        self.std_V = np.asarray(state["std"], dtype=np.float32)
        self.time_scale = float(state["time_scale"])
        return self

    @classmethod
    def entry_for_new_rows(cls, entry: dict, state: dict) -> dict:
        """The training channels (another channel in a long table is an error naming it) and, for a long table,
        the training grid length (a longer grid keeps its last steps)."""
        entry = {**entry, "channels": list(state["channels"])}
        if "table" in entry:
            entry["steps"] = int(state["steps"])
        return entry

    def describe(self) -> str:
        form = "long table" if self.ptr is not None else "array"
        return f"series, {len(self.channels)} channels x {self.steps} steps ({form})"

    def batch(self, rows: np.ndarray, keep: np.ndarray | None = None) -> tuple[SeriesInput, torch.Tensor]:
        rows, read = self._rows_and_keep(rows, keep)
        B, V, U = len(rows), len(self.channels), self.steps
        if self.ptr is not None:
            b, ch, step, t, v = self._long_rows(rows[read])
            b = np.flatnonzero(read)[b]
            total, count = np.zeros((B, V, U)), np.zeros((B, V, U))
            np.add.at(total, (b, ch, step), v)  # a repeated (time, channel) is averaged
            np.add.at(count, (b, ch, step), 1)
            observed = count > 0
            values = np.where(observed, total / np.maximum(count, 1), np.nan)
            times = np.zeros((B, U))
            times[b, step] = t
            first = np.full(B, np.inf)
            np.minimum.at(first, b, t)
            times = np.where(observed.any(axis=1), times - np.where(np.isfinite(first), first, 0)[:, None], 0.0)
        else:
            values = self.values_NVU[rows].astype(np.float64)
            values[~read] = np.nan
            times = self.times_NU[rows] - self.times_NU[rows, :1]
            times[~read] = 0.0
        values = (values - self.mean_V[None, :, None]) / self.std_V[None, :, None]
        missing = np.isnan(values)
        x = SeriesInput(
            torch.from_numpy(np.where(missing, 0.0, values).astype(np.float32)),
            torch.from_numpy((times / self.time_scale).astype(np.float32)),
        )
        return x, torch.from_numpy(missing)


def _names(entry: dict, label: str) -> list[str] | None:
    channels = entry.get("channels")
    if channels is not None and (not isinstance(channels, list) or not channels or len(set(map(str, channels))) !=
                                 len(channels)):  # fmt: skip
        raise DataError(f"{label}: 'channels' must be a list of distinct channel names, got {channels!r}")
    return None if channels is None else [str(c) for c in channels]


def _times(column: pd.Series, label: str) -> np.ndarray:
    """Observation times as float64: numbers as given, dates and times in seconds."""
    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.notna().all():
        return numeric.to_numpy(dtype=np.float64)
    try:
        dates = pd.to_datetime(column, errors="raise", format="mixed")
    except (ValueError, TypeError):
        bad = int(np.flatnonzero(numeric.isna().to_numpy())[0])
        raise DataError(
            f"{label}: the time column '{column.name}' holds {column.iloc[bad]!r} at data line {column.index[bad]}; "
            "times must be numbers or dates"
        ) from None
    if dates.isna().any():
        bad = int(np.flatnonzero(dates.isna().to_numpy())[0])
        raise DataError(f"{label}: the time column '{column.name}' is empty at data line {column.index[bad]}")
    return (dates - dates.min()).dt.total_seconds().to_numpy(dtype=np.float64)


def _read_long(path: Path, label: str) -> pd.DataFrame:
    """The long table (CSV, TSV or Parquet); data lines count from 0 after the header."""
    return read_frame(path, f"{label}: the series table")
