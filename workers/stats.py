"""10-minute window statistics with numpy. Pure functions: no I/O, no clock.

Windows are half-open ``[t, t + 10 min)``, aligned to the hour and labelled by
their start ``t`` (what ``date_bin('10 minutes', ts, '2000-01-01')`` and pandas
``resample('10min')`` do). NaN values are ignored; a window without a value has
no statistics, one with a single value has no standard deviation (ddof=1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import numpy as np

STATS = ("mean", "min", "max", "std")
WINDOW = np.timedelta64(10, "m")
_WINDOW_US = np.int64(10 * 60 * 1_000_000)


class StatRow(NamedTuple):
    """One row of the target's ``data`` table, before signal names become ids."""

    timestamp: datetime
    signal: str
    value: float


@dataclass(frozen=True)
class WindowStats:
    """Statistics of the windows that hold at least one value, ordered by start.

    All arrays have one entry per window; ``std`` is NaN where ``count`` is 1.
    """

    start: np.ndarray  # datetime64[us]
    count: np.ndarray  # int64
    mean: np.ndarray
    min: np.ndarray
    max: np.ndarray
    std: np.ndarray

    def __len__(self) -> int:
        return len(self.start)


def signal_name(variable: str, stat: str) -> str:
    """The target's name for a statistic of a variable, e.g. ``power_std_10m``."""
    return f"{variable}_{stat}_10m"


def signal_names(variables: Sequence[str]) -> list[str]:
    """Every signal the given variables produce."""
    return [signal_name(v, s) for v in variables for s in STATS]


def window_stats(timestamps: np.ndarray, values: np.ndarray) -> WindowStats:
    """Mean, min, max and sample std of ``values`` per 10-minute window.

    ``timestamps`` is anything numpy reads as ``datetime64`` (naive UTC) and
    need not be sorted; ``values`` holds floats with NaN (or None) for gaps.
    """
    ts = np.asarray(timestamps, dtype="datetime64[us]").astype(np.int64)
    vals = np.asarray(values, dtype=np.float64)
    if ts.shape != vals.shape or ts.ndim != 1:
        raise ValueError(f"timestamps {ts.shape} and values {vals.shape} must be equal 1-d shapes")
    present = ~np.isnan(vals)
    # Floor division also floors instants before 1970 correctly; the epoch
    # is on a whole hour, so the bins line up with the clock.
    bins, vals = ts[present] // _WINDOW_US, vals[present]
    if len(bins) and np.any(bins[1:] < bins[:-1]):
        order = np.argsort(bins, kind="stable")
        bins, vals = bins[order], vals[order]
    if not len(bins):
        empty = np.empty(0)
        no_starts, no_counts = np.empty(0, "datetime64[us]"), np.empty(0, np.int64)
        return WindowStats(no_starts, no_counts, empty, empty, empty, empty)
    first = np.flatnonzero(np.concatenate(([True], bins[1:] != bins[:-1])))
    count = np.diff(np.append(first, len(vals)))
    mean = np.add.reduceat(vals, first) / count
    # Two passes (deviations from the window mean) keep the variance exact
    # enough to match stddev_samp even for large, nearly constant values.
    deviation = vals - np.repeat(mean, count)
    squares = np.add.reduceat(deviation * deviation, first)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.where(count > 1, np.sqrt(squares / (count - 1)), np.nan)
    return WindowStats(
        start=(bins[first] * _WINDOW_US).astype("datetime64[us]"),
        count=count,
        mean=mean,
        min=np.minimum.reduceat(vals, first),
        max=np.maximum.reduceat(vals, first),
        std=std,
    )


def stat_rows(timestamps: np.ndarray, columns: Mapping[str, np.ndarray]) -> list[StatRow]:
    """The target rows for ``columns`` (variable name -> values at ``timestamps``).

    Rows are ordered by signal then timestamp; NaN statistics (the std of a
    one-value window) make no row.
    """
    rows: list[StatRow] = []
    for variable, values in columns.items():
        stats = window_stats(timestamps, values)
        starts = stats.start.tolist()
        for stat in STATS:
            name = signal_name(variable, stat)
            column = getattr(stats, stat)
            rows.extend(
                StatRow(t, name, float(v)) for t, v in zip(starts, column.tolist(), strict=True)
                if v == v  # NaN is the only value not equal to itself
            )
    return rows
