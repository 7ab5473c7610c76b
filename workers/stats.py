"""10-minute window statistics with numpy. Pure functions: no I/O, no clock.

Windows are half-open ``[t, t + 10 min)``, aligned to the hour and labelled by
their start ``t`` (what ``date_bin('10 minutes', ts, '2000-01-01')`` and pandas
``resample('10min')`` do). The rules:

- A missing value is ignored: NULL (NaN or None here) and every non-finite
  value alike (NaN, +inf, -inf are readings a sensor could not make).
- A window without a value has no statistics; one with a single value has
  mean, min and max but no standard deviation (sample std, ddof=1).
- Nothing overflows on the way: a window whose true mean or std is a finite
  double gets it (the std of ``[1e300, -1e300]`` is ``1.414...e300``). Each
  window is computed on its values scaled by a power of two, which is exact,
  so for ordinary values the result is bit for bit the plain two-pass one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from math import isfinite
from typing import NamedTuple

import numpy as np

from windfarm.vocabulary import STATS, signal_name

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


def window_stats(timestamps: np.ndarray, values: np.ndarray) -> WindowStats:
    """Mean, min, max and sample std of ``values`` per 10-minute window.

    ``timestamps`` is anything numpy reads as ``datetime64`` (naive UTC) and
    need not be sorted; ``values`` holds floats, any non-finite one (or None)
    counting as missing.
    """
    ts = np.asarray(timestamps, dtype="datetime64[us]").astype(np.int64)
    vals = np.asarray(values, dtype=np.float64)
    if ts.shape != vals.shape or ts.ndim != 1:
        raise ValueError(f"timestamps {ts.shape} and values {vals.shape} must be equal 1-d shapes")
    present = np.isfinite(vals)
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
    low, high = np.minimum.reduceat(vals, first), np.maximum.reduceat(vals, first)
    mean, std = _mean_std(vals, first, count, np.maximum(np.abs(low), np.abs(high)))
    return WindowStats(
        start=(bins[first] * _WINDOW_US).astype("datetime64[us]"),
        count=count,
        mean=mean,
        min=low,
        max=high,
        std=std,
    )


def _mean_std(
    vals: np.ndarray, first: np.ndarray, count: np.ndarray, magnitude: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std (NaN for one value) of the finite ``vals`` per window.

    Windows start at ``first``, hold ``count`` values and ``magnitude`` is the
    largest absolute value of each.
    """
    # Scale each window by 2**-e so its largest magnitude lies in [0.5, 1):
    # sums and squares of deviations then stay far from overflow. Scaling by
    # a power of two is exact, so every operation below rounds exactly as on
    # the unscaled values (barring subnormals), and 2**-2e has an exact square
    # root: results scaled back are those of the plain formula where it does
    # not overflow.
    exponent = np.frexp(magnitude)[1]
    scaled = np.ldexp(vals, np.repeat(-exponent, count))
    mean = np.add.reduceat(scaled, first) / count
    # Two passes (deviations from the window mean) keep the variance exact
    # enough to match stddev_samp even for large, nearly constant values.
    deviation = scaled - np.repeat(mean, count)
    squares = np.add.reduceat(deviation * deviation, first)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.where(count > 1, np.sqrt(squares / (count - 1)), np.nan)
    # Only a std beyond the largest double overflows here, and is then inf.
    with np.errstate(over="ignore"):
        return np.ldexp(mean, exponent), np.ldexp(std, exponent)


def stat_rows(timestamps: np.ndarray, columns: Mapping[str, np.ndarray]) -> list[StatRow]:
    """The target rows for ``columns`` (variable name -> values at ``timestamps``).

    Rows are ordered by signal then timestamp. A statistic that is no finite
    double makes no row: the std of a one-value window (NaN), or a std beyond
    the largest double (of values spanning nearly the whole float range).
    """
    rows: list[StatRow] = []
    for variable, values in columns.items():
        stats = window_stats(timestamps, values)
        starts = stats.start.tolist()
        for stat in STATS:
            name = signal_name(variable, stat)
            column = getattr(stats, stat)
            rows.extend(
                StatRow(t, name, float(v))
                for t, v in zip(starts, column.tolist(), strict=True)
                if isfinite(v)
            )
    return rows
