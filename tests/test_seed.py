"""The source generator: content, determinism, plausibility, idempotence."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, datetime

import pytest
from sqlalchemy import create_engine, text

from api.seed_source import seed
from tests.support.databases import PG_URL, RUN_ID, Databases
from windfarm.db import drop_database


def _scalar(url: str, sql: str):
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).one()
    finally:
        engine.dispose()


@pytest.fixture
def scratch_url():
    url = f"{PG_URL}/wf_{RUN_ID}_scratch_source"
    yield url
    drop_database(url)


def test_default_content_is_ten_days_of_minutes(shared_dbs: Databases):
    count, first, last, distinct = _scalar(
        shared_dbs.source_url,
        'SELECT count(*), min("timestamp"), max("timestamp"), count(DISTINCT "timestamp") '
        "FROM data",
    )
    assert count == distinct == 14_400
    assert first == datetime(2025, 12, 1, 0, 0)
    assert last == datetime(2025, 12, 10, 23, 59)


def test_values_are_plausible_for_a_2mw_turbine(shared_dbs: Databases):
    row = _scalar(
        shared_dbs.source_url,
        """SELECT min(wind_speed), max(wind_speed), avg(wind_speed),
                  min(power), max(power),
                  min(ambient_temprature), max(ambient_temprature),
                  count(*) FILTER (WHERE wind_speed < 3 AND power > 0),
                  count(*) FILTER (WHERE wind_speed >= 12 AND wind_speed < 25 AND power < 1900),
                  corr(wind_speed, power),
                  count(*) FILTER (WHERE wind_speed IS NULL OR power IS NULL
                                   OR ambient_temprature IS NULL)
           FROM data""",
    )
    (
        ws_min,
        ws_max,
        ws_avg,
        p_min,
        p_max,
        t_min,
        t_max,
        spin_below_cut_in,
        weak_at_rated,
        corr,
        gaps,
    ) = row
    assert ws_min >= 0 and ws_max < 30 and 4 < ws_avg < 12
    assert p_min == 0 and p_max == 2000  # stops below cut-in, capped at rated
    assert -25 < t_min < t_max < 25
    assert spin_below_cut_in == 0
    assert weak_at_rated == 0
    assert corr > 0.8
    assert 0 < gaps < 14_400 * 0.02  # some sensor gaps, not many


def test_temperature_and_wind_follow_a_daily_cycle(shared_dbs: Databases):
    night, afternoon = _scalar(
        shared_dbs.source_url,
        """SELECT avg(ambient_temprature)
                      FILTER (WHERE extract(hour FROM "timestamp") BETWEEN 2 AND 4),
                  avg(ambient_temprature)
                      FILTER (WHERE extract(hour FROM "timestamp") BETWEEN 13 AND 15)
           FROM data""",
    )
    assert afternoon - night > 3


def test_two_fresh_databases_hold_identical_values(shared_dbs: Databases, scratch_url: str):
    seed(scratch_url)
    digest = """SELECT md5(string_agg(concat_ws(',', "timestamp", wind_speed, power,
                                                 ambient_temprature), ';' ORDER BY "timestamp"))
                FROM data"""
    assert _scalar(scratch_url, digest) == _scalar(shared_dbs.source_url, digest)


def test_reseeding_changes_nothing_and_keeps_edits(scratch_url: str):
    assert seed(scratch_url) == 14_400
    engine = create_engine(scratch_url)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE data SET power = 1234.5 WHERE \"timestamp\" = '2025-12-03 10:00'")
        )
    engine.dispose()
    assert seed(scratch_url) == 0
    count, edited = _scalar(
        scratch_url,
        "SELECT count(*), max(power) FILTER (WHERE \"timestamp\" = '2025-12-03 10:00') FROM data",
    )
    assert (count, edited) == (14_400, 1234.5)


def test_extra_range_fills_only_missing_minutes(scratch_url: str):
    # Overlaps the default range by one day: only 2025-12-11 and -12 are new.
    inserted = seed(scratch_url, start=date(2025, 12, 10), end=date(2025, 12, 12))
    assert inserted == 14_400 + 2 * 1440
    count, last = _scalar(scratch_url, 'SELECT count(*), max("timestamp") FROM data')
    assert (count, last) == (14_400 + 2 * 1440, datetime(2025, 12, 12, 23, 59))
    assert seed(scratch_url, start=date(2025, 12, 10), end=date(2025, 12, 12)) == 0


def test_cli_creates_the_database_and_is_idempotent(scratch_url: str):
    env = {"SOURCE_DATABASE_URL": scratch_url}
    first = _run_cli(env)
    assert first.returncode == 0, first.stderr
    assert "14400 rows inserted" in first.stdout
    again = _run_cli(env)
    assert again.returncode == 0 and "0 rows inserted" in again.stdout


def test_cli_rejects_a_bad_range(scratch_url: str):
    env = {"SOURCE_DATABASE_URL": scratch_url}
    result = _run_cli(env, "--start", "2025-12-05", "--end", "2025-12-01")
    assert result.returncode == 2
    assert "before --start" in result.stderr
    result = _run_cli(env, "--start", "2025-13-05", "--end", "2025-12-01")
    assert result.returncode == 2 and "is not a date" in result.stderr


def test_cli_reports_an_unreachable_server():
    result = _run_cli({"SOURCE_DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/x"})
    assert result.returncode == 1
    assert "cannot seed the source database" in result.stderr
    assert "Traceback" not in result.stderr


def _run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.seed_source", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
