"""The pure statistics functions (workers.stats), without any I/O."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from datetime import datetime, timedelta
from fractions import Fraction

import numpy as np
import pytest

from windfarm.vocabulary import STATS, signal_names
from workers.stats import stat_rows, window_stats

T0 = datetime(2025, 12, 5, 10, 0)
NAN = float("nan")
INF = float("inf")
BIG = 1.7976931348623157e308  # the largest double


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
    stats = window_stats(
        np.array(minutes(10, T0 + timedelta(minutes=7)), "datetime64[us]"), np.ones(10)
    )
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
    stamps = [
        T0 + timedelta(minutes=9, seconds=59, microseconds=999_999),
        T0 + timedelta(minutes=10),
    ]
    stats = window_stats(stamps, np.array([1.0, 2.0]))
    assert stats.start.tolist() == [T0, T0 + timedelta(minutes=10)]
    half = window_stats(
        [T0 + timedelta(seconds=30), T0 + timedelta(minutes=1)], np.array([1.0, 3.0])
    )
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
        "wind_speed_mean_10m",
        "wind_speed_min_10m",
        "wind_speed_max_10m",
        "wind_speed_std_10m",
        "power_mean_10m",
        "power_min_10m",
        "power_max_10m",
        "power_std_10m",
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


# --- non-finite values are missing --------------------------------------------


def test_nan_and_infinities_are_ignored():
    # 10:00 holds only non-finite values, 10:10 one finite value among them.
    only_non_finite = [NAN, INF, -INF] * 3 + [INF]
    one_finite = [INF, NAN, 4.25, -INF] + [NAN] * 6
    values = np.array(only_non_finite + one_finite)
    stamps = minutes(len(values))
    rows = as_dict(stat_rows(np.array(stamps, "datetime64[us]"), {"power": values}))
    w10 = T0 + timedelta(minutes=10)
    assert rows == {
        (w10, "power_mean_10m"): 4.25,
        (w10, "power_min_10m"): 4.25,
        (w10, "power_max_10m"): 4.25,
    }


def test_infinities_do_not_reach_min_max_or_std():
    stats = window_stats(minutes(5), np.array([1.0, INF, 3.0, -INF, NAN]))
    assert stats.count.tolist() == [2]
    assert (stats.mean[0], stats.min[0], stats.max[0]) == (2.0, 1.0, 3.0)
    assert stats.std[0] == math.sqrt(2)


# --- no overflow, no underflow -----------------------------------------------------


def exact_mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std of ``values`` computed exactly, then rounded once."""
    exact = [Fraction(v) for v in values]
    mean = sum(exact) / len(exact)
    var = sum((x - mean) ** 2 for x in exact) / (len(exact) - 1)
    # sqrt of var / 4**k in floats, var / 4**k being moderate: no overflow either.
    k = (var.numerator.bit_length() - var.denominator.bit_length()) // 2
    return float(mean), math.ldexp(math.sqrt(var / Fraction(4) ** k), k)


def test_std_of_opposite_huge_values_is_finite():
    stats = window_stats(minutes(2), np.array([1e300, -1e300]))
    assert stats.mean[0] == 0.0
    assert stats.std[0] == 1.4142135623730951e300 == exact_mean_std([1e300, -1e300])[1]


def test_values_near_the_largest_double():
    values = [1.7e308, 1.7e308, 1.6e308]
    stats = window_stats(minutes(3), np.array(values))
    mean, std = exact_mean_std(values)
    assert (stats.min[0], stats.max[0]) == (1.6e308, 1.7e308)
    assert stats.mean[0] == pytest.approx(mean, rel=1e-15)
    assert stats.std[0] == pytest.approx(std, rel=1e-12)
    same = window_stats(minutes(2), np.array([1.7e308, 1.7e308]))
    assert (same.mean[0], same.std[0]) == (1.7e308, 0.0)


def test_extremes_of_both_signs():
    # BIG - (-BIG / 2) would overflow, as would BIG + BIG / 2; the std does not.
    values = [BIG, BIG / 2, -BIG / 2]
    stats = window_stats(minutes(3), np.array(values))
    mean, std = exact_mean_std(values)
    assert stats.mean[0] == pytest.approx(mean, rel=1e-15)
    assert math.isfinite(stats.std[0]) and stats.std[0] == pytest.approx(std, rel=1e-12)


def test_tiny_values():
    values = [5e-324, 1e-310]  # the smallest subnormal and a larger one
    stats = window_stats(minutes(2), np.array(values))
    mean, std = exact_mean_std(values)
    assert (stats.min[0], stats.max[0]) == (5e-324, 1e-310)
    # Subnormals carry an absolute precision of 5e-324: within one step of exact.
    assert abs(stats.mean[0] - mean) <= 5e-324
    assert stats.std[0] == pytest.approx(std, rel=1e-12)
    assert stats.std[0] > 0  # the plain formula squares the deviations to 0


@pytest.mark.parametrize("seed", range(3))
def test_a_large_window_of_mixed_magnitudes_matches_exact_arithmetic(seed: int):
    rng = np.random.default_rng(seed)
    # 600 values in one window, magnitudes from 1e-300 to the largest double,
    # both signs: the plain sums would overflow.
    magnitude = 10.0 ** rng.uniform(-300, 308, 600)
    magnitude[:5] = rng.uniform(1.6e308, BIG, 5)
    values = rng.permutation(magnitude * rng.choice([-1.0, 1.0], 600))
    stamps = np.datetime64(T0, "us") + np.arange(600) * np.timedelta64(1, "s")
    stats = window_stats(stamps, values)
    mean, std = exact_mean_std(values.tolist())
    assert stats.count.tolist() == [600]
    assert (stats.min[0], stats.max[0]) == (values.min(), values.max())
    assert stats.mean[0] == pytest.approx(mean, rel=1e-15)
    assert stats.std[0] == pytest.approx(std, rel=1e-12)


# --- ordinary values: exactly the plain two-pass result ---------------------------


def plain_two_pass(timestamps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per window as computed before scaling was introduced."""
    ts = np.asarray(timestamps, dtype="datetime64[us]").astype(np.int64)
    present = ~np.isnan(values)
    bins, vals = ts[present] // (10 * 60 * 1_000_000), values[present]
    order = np.argsort(bins, kind="stable")
    bins, vals = bins[order], vals[order]
    first = np.flatnonzero(np.concatenate(([True], bins[1:] != bins[:-1])))
    count = np.diff(np.append(first, len(vals)))
    mean = np.add.reduceat(vals, first) / count
    deviation = vals - np.repeat(mean, count)
    squares = np.add.reduceat(deviation * deviation, first)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.where(count > 1, np.sqrt(squares / (count - 1)), np.nan)
    return mean, std


def bits(values: np.ndarray) -> list[int]:
    return np.asarray(values, dtype=np.float64).view(np.int64).tolist()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("kind", ["around 1e3", "1e9 nearly constant", "around zero"])
def test_ordinary_values_give_the_plain_two_pass_result_bit_for_bit(kind: str, seed: int):
    rng = np.random.default_rng(seed)
    n = 5000
    # Random instants over a day: windows of 0 to about 20 values, some off the minute.
    offsets = np.sort(rng.integers(0, 86_400_000_000, size=n))
    stamps = np.datetime64("2025-12-05", "us") + offsets.astype("timedelta64[us]")
    values = {
        "around 1e3": lambda: rng.normal(1e3, 1e2, n),
        "1e9 nearly constant": lambda: 1e9 + rng.normal(0, 1e-4, n),
        "around zero": lambda: rng.normal(0, 3, n),
    }[kind]()
    values[rng.random(n) < 0.1] = NAN
    stats = window_stats(stamps, values)
    mean, std = plain_two_pass(stamps, values)
    assert bits(stats.mean) == bits(mean)
    assert bits(stats.std) == bits(std)
