"""The pure statistics functions (workers.stats), without any I/O."""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from datetime import datetime, timedelta

import numpy as np
import pytest

from workers.stats import STATS, signal_names, stat_rows, window_stats

T0 = datetime(2025, 12, 5, 10, 0)
NAN = float("nan")


def minutes(n: int, start: datetime = T0) -> list[datetime]:
    return [start + timedelta(minutes=i) for i in range(n)]


def as_dict(rows) -> dict[tuple[datetime, str], float]:
    return {(r.timestamp, r.signal): r.value for r in rows}


def test_windows_are_half_open_and_labelled_by_their_start():
    # 10:00 .. 10:10 inclusive: the minute 10:10 starts the next window.
    stats = window_stats(np.array(minutes(11), "datetime64[us]"), np.arange(11.0))
    assert stats.start.tolist() == [T0, T0 + timedelta(minutes=10)]
    assert stats.count.tolist() == [10, 1]
    assert stats.mean.tolist() == [4.5, 10.0]
    assert stats.min.tolist() == [0.0, 10.0]
    assert stats.max.tolist() == [9.0, 10.0]


def test_windows_align_to_the_clock_not_to_the_first_value():
    stats = window_stats(np.array(minutes(10, T0 + timedelta(minutes=7)), "datetime64[us]"),
                         np.ones(10))
    assert stats.start.tolist() == [T0, T0 + timedelta(minutes=10)]
    assert stats.count.tolist() == [3, 7]


def test_std_is_the_sample_std():
    values = np.array([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    stats = window_stats(np.array(minutes(8), "datetime64[us]"), values)
    # Population std of these is exactly 2; the sample std is sqrt(32 / 7).
    assert stats.std[0] == pytest.approx(math.sqrt(32 / 7), rel=1e-15)
    assert stats.std[0] == pytest.approx(np.std(values, ddof=1), rel=1e-15)
    assert stats.std[0] != pytest.approx(2.0)


def test_nan_and_none_are_ignored():
    stats = window_stats(minutes(4), np.array([1.0, None, 3.0, NAN], dtype=float))
    assert stats.count.tolist() == [2]
    assert stats.mean.tolist() == [2.0]
    assert stats.std[0] == pytest.approx(math.sqrt(2))


def test_a_window_without_values_has_no_rows():
    values = np.full(30, 5.0)
    values[10:20] = NAN  # the 10:10 window holds only NULLs
    rows = stat_rows(np.array(minutes(30), "datetime64[us]"), {"power": values})
    assert {r.timestamp for r in rows} == {T0, T0 + timedelta(minutes=20)}
    assert len(rows) == 2 * 4


def test_one_value_gives_mean_min_max_but_no_std():
    rows = as_dict(stat_rows(np.array([T0], "datetime64[us]"), {"wind_speed": np.array([7.5])}))
    assert rows == {
        (T0, "wind_speed_mean_10m"): 7.5,
        (T0, "wind_speed_min_10m"): 7.5,
        (T0, "wind_speed_max_10m"): 7.5,
    }


def test_a_timestamp_off_the_minute_falls_in_the_window_holding_it():
    stamps = [T0 + timedelta(minutes=9, seconds=59, microseconds=999_999),
              T0 + timedelta(minutes=10)]
    stats = window_stats(stamps, np.array([1.0, 2.0]))
    assert stats.start.tolist() == [T0, T0 + timedelta(minutes=10)]
    half = window_stats([T0 + timedelta(seconds=30), T0 + timedelta(minutes=1)],
                        np.array([1.0, 3.0]))
    assert half.start.tolist() == [T0] and half.mean.tolist() == [2.0]


def test_unsorted_input_gives_the_same_result():
    stamps = np.array(minutes(60), "datetime64[us]")
    values = np.random.default_rng(3).normal(size=60)
    order = np.random.default_rng(4).permutation(60)
    a, b = window_stats(stamps, values), window_stats(stamps[order], values[order])
    for name in ("start", "count", "min", "max"):
        assert getattr(a, name).tolist() == getattr(b, name).tolist()
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-14)
    np.testing.assert_allclose(a.std, b.std, rtol=1e-12)


def test_no_values_no_windows():
    assert len(window_stats(np.array([], "datetime64[us]"), np.array([]))) == 0
    assert len(window_stats(minutes(3), np.full(3, NAN))) == 0
    assert stat_rows(np.array([], "datetime64[us]"), {"power": np.array([])}) == []


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        window_stats(minutes(3), np.ones(2))


def test_signal_names_follow_the_contract():
    assert signal_names(["wind_speed", "power"]) == [
        "wind_speed_mean_10m", "wind_speed_min_10m", "wind_speed_max_10m", "wind_speed_std_10m",
        "power_mean_10m", "power_min_10m", "power_max_10m", "power_std_10m",
    ]


def reference(stamps: list[datetime], values: list[float], variable: str) -> dict:
    """Window statistics the plain way: a dict of lists and the statistics module."""
    windows: dict[datetime, list[float]] = defaultdict(list)
    for ts, value in zip(stamps, values, strict=True):
        if not math.isnan(value):
            floor = ts.replace(minute=ts.minute - ts.minute % 10, second=0, microsecond=0)
            windows[floor].append(value)
    rows = {}
    for start, vals in windows.items():
        rows[(start, f"{variable}_mean_10m")] = statistics.fmean(vals)
        rows[(start, f"{variable}_min_10m")] = min(vals)
        rows[(start, f"{variable}_max_10m")] = max(vals)
        if len(vals) > 1:
            rows[(start, f"{variable}_std_10m")] = statistics.stdev(vals)
    return rows


@pytest.mark.parametrize("seed", range(5))
def test_matches_a_plain_reference_on_random_data(seed: int):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    # Random instants over a day (many off the minute, some windows empty),
    # values of very different scales, about 20 % missing.
    offsets = rng.integers(0, 86_400_000_000, size=n)
    stamps = [datetime(2025, 12, 5) + timedelta(microseconds=int(o)) for o in offsets]
    values = rng.normal(loc=rng.choice([0.0, 7.0, 1500.0]), scale=rng.uniform(0.01, 300), size=n)
    values[rng.random(n) < 0.2] = NAN
    expected = reference(stamps, values.tolist(), "power")
    actual = as_dict(stat_rows(np.array(stamps, "datetime64[us]"), {"power": values}))
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_rows_cover_every_variable_and_stat():
    values = np.linspace(0, 1, 60)
    stamps = np.array(minutes(60), "datetime64[us]")
    rows = stat_rows(stamps, {"wind_speed": values, "power": values})
    assert len(rows) == 6 * 2 * len(STATS)
    assert {r.signal for r in rows} == set(signal_names(["wind_speed", "power"]))


def test_a_year_of_minutes_takes_well_under_a_second():
    stamps = np.arange(np.datetime64("2025-01-01"), np.datetime64("2026-01-01"),
                       np.timedelta64(1, "m")).astype("datetime64[us]")
    values = np.random.default_rng(0).normal(8, 2, len(stamps))
    values[::97] = NAN
    began = time.perf_counter()
    stats = window_stats(stamps, values)
    took = time.perf_counter() - began
    assert len(stats) == 365 * 24 * 6
    assert took < 0.5, f"{took:.3f} s"
