"""``GET /signals`` and ``GET /series`` over HTTP, in process, with the real target.

Target rows are written directly: the oracle's statistics of the seeded source
(``tests/support/oracle.py``), or hand-picked values where a test needs exact ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest
from sqlalchemy import text

from tests.support.databases import Databases, in_process_client, module_databases
from tests.support.oracle import expected_rows
from windfarm.db import target_engine


@pytest.fixture(scope="module")
def module_dbs() -> Iterator[Databases]:
    """Databases of this module's own: its tests write to the target."""
    with module_databases("series") as dbs:
        yield dbs


@pytest.fixture
def api(module_dbs: Databases):
    """An in-process client on an empty target."""
    with in_process_client(
        module_dbs, reset_sql="TRUNCATE data, signal RESTART IDENTITY CASCADE"
    ) as client:
        yield client


def write(rows: dict[tuple[datetime, str], float]) -> None:
    """Store ``{(timestamp, signal name): value}`` in the target, creating the signals."""
    names = sorted({name for _, name in rows})
    with target_engine().begin() as conn:
        for name in names:
            conn.execute(
                text("INSERT INTO signal (name) VALUES (:n) ON CONFLICT DO NOTHING"), {"n": name}
            )
        conn.execute(
            text(
                'INSERT INTO data ("timestamp", signal_id, value) '
                "SELECT :t, id, :v FROM signal WHERE name = :n"
            ),
            [{"t": t, "n": n, "v": v} for (t, n), v in rows.items()],
        )


def series(api, *signals: str, **params) -> list[dict]:
    response = api.get("/series", params={"signal": list(signals), **params})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def test_signals_lists_names_and_ids_by_name(api):
    assert api.get("/signals").json() == []
    write(
        {
            (datetime(2025, 12, 5), "wind_speed_mean_10m"): 1.0,
            (datetime(2025, 12, 5), "power_max_10m"): 2.0,
        }
    )
    listed = api.get("/signals").json()
    assert [s["name"] for s in listed] == ["power_max_10m", "wind_speed_mean_10m"]
    assert all(isinstance(s["id"], int) for s in listed)
    assert len({s["id"] for s in listed}) == 2


def test_series_equals_the_statistics_postgresql_computes(api, module_dbs: Databases):
    start, end = datetime(2025, 12, 5, 6), datetime(2025, 12, 5, 9)
    expected = expected_rows(module_dbs.source_url, start, end)
    write(expected)
    rows = series(
        api, "wind_speed_mean_10m", start="2025-12-05T06:00:00", end="2025-12-05T08:50:00"
    )
    assert [r["timestamp"] for r in rows] == [
        f"2025-12-05T{h:02d}:{m:02d}:00" for h in range(6, 9) for m in range(0, 60, 10)
    ]
    for row in rows:
        assert set(row) == {"timestamp", "wind_speed_mean_10m"}
        # Exact: PostgreSQL writes the shortest text that reads back as the same double.
        assert (
            row["wind_speed_mean_10m"]
            == expected[(datetime.fromisoformat(row["timestamp"]), "wind_speed_mean_10m")]
        )


def test_repeated_signals_give_one_key_each_and_null_where_missing(api):
    t0, t1 = datetime(2025, 12, 5, 0, 0), datetime(2025, 12, 5, 0, 10)
    write(
        {
            (t0, "power_mean_10m"): 800.5,
            (t0, "power_std_10m"): 12.25,
            (t1, "power_mean_10m"): 900.0,
            (t1, "wind_speed_mean_10m"): 7.5,
        }
    )
    rows = series(api, "power_std_10m", "power_mean_10m", "power_std_10m", start="2025-12-05")
    assert rows == [
        {"timestamp": "2025-12-05T00:00:00", "power_std_10m": 12.25, "power_mean_10m": 800.5},
        # A window with one value has no std: its key is null, the row is there.
        {"timestamp": "2025-12-05T00:10:00", "power_std_10m": None, "power_mean_10m": 900.0},
    ]
    # Windows where none of the asked signals has a value are left out.
    assert series(api, "power_max_10m", start="2025-12-05") == []


def test_the_range_is_inclusive_and_defaults_to_start_s_day(api):
    write(
        {
            (datetime(2025, 12, 4, 23, 50), "power_mean_10m"): 1.0,
            (datetime(2025, 12, 5, 0, 0), "power_mean_10m"): 2.0,
            (datetime(2025, 12, 5, 23, 50), "power_mean_10m"): 3.0,
            (datetime(2025, 12, 6, 0, 0), "power_mean_10m"): 4.0,
        }
    )
    day = series(api, "power_mean_10m", start="2025-12-05")
    assert [r["power_mean_10m"] for r in day] == [2.0, 3.0]
    both_ends = series(
        api, "power_mean_10m", start="2025-12-04T23:50:00", end="2025-12-06T00:00:00"
    )
    assert [r["power_mean_10m"] for r in both_ends] == [1.0, 2.0, 3.0, 4.0]
    # Offset-aware input is converted to UTC: 01:00+01:00 is midnight UTC.
    shifted = series(
        api, "power_mean_10m", start="2025-12-05T01:00:00+01:00", end="2025-12-05T01:00:00+01:00"
    )
    assert [r["power_mean_10m"] for r in shifted] == [2.0]


def test_a_spec_signal_nothing_wrote_yet_is_an_empty_series(api):
    assert series(api, "ambient_temprature_std_10m", start="2025-12-05") == []


def test_a_signal_outside_the_spec_names_is_served_when_the_target_has_it(api):
    write({(datetime(2025, 12, 5), "rotor_speed_mean_10m"): 11.0})
    assert series(api, "rotor_speed_mean_10m", start="2025-12-05") == [
        {"timestamp": "2025-12-05T00:00:00", "rotor_speed_mean_10m": 11.0}
    ]


def test_the_range_is_bounded_by_data_max_days(api, settings_env):
    ok = api.get(
        "/series",
        params={"signal": "power_mean_10m", "start": "2025-12-01", "end": "2026-01-01T00:00:00"},
    )
    assert ok.status_code == 200
    response = api.get(
        "/series",
        params={"signal": "power_mean_10m", "start": "2025-12-01", "end": "2026-01-01T00:00:01"},
    )
    assert response.status_code == 422
    assert "longer than 31 days (DATA_MAX_DAYS)" in response.json()["detail"]
    settings_env(DATA_MAX_DAYS="1")
    response = api.get(
        "/series", params={"signal": "power_mean_10m", "start": "2025-12-01", "end": "2025-12-03"}
    )
    assert response.status_code == 422
    assert "longer than 1 days (DATA_MAX_DAYS)" in response.json()["detail"]


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"start": "2025-12-05"}, "signal is required"),
        ({"signal": "power_mean_10m"}, "start is required"),
        (
            {"signal": "power_mean_10m", "start": "soon"},
            "start 'soon' is not an ISO 8601 date-time such as 2025-12-05T00:00:00",
        ),
        (
            {"signal": "power_mean_10m", "start": "2025-12-05", "end": "2025-12-05T25:00:00"},
            "end '2025-12-05T25:00:00' is not an ISO 8601 date-time such as 2025-12-05T00:00:00",
        ),
        (
            {
                "signal": "power_mean_10m",
                "start": "2025-12-05T10:00:00",
                "end": "2025-12-05T09:00:00",
            },
            "end 2025-12-05T09:00:00 is before start 2025-12-05T10:00:00",
        ),
        (
            {"signal": "power_avg_10m", "start": "2025-12-05"},
            "unknown signal 'power_avg_10m'; GET /signals lists them, e.g. wind_speed_mean_10m",
        ),
        (
            {"signal": ["power_mean_10m", "nope", 'x" FROM pg_user --'], "start": "2025-12-05"},
            "unknown signal 'nope', 'x\" FROM pg_user --'; GET /signals lists them, "
            "e.g. wind_speed_mean_10m",
        ),
        (
            {"signal": [f"s{i}" for i in range(13)], "start": "2025-12-05"},
            "ask for at most 12 signals at once",
        ),
    ],
)
def test_bad_input_is_422_with_a_readable_message(api, params, detail):
    response = api.get("/series", params=params)
    assert response.status_code == 422
    assert response.json()["detail"] == detail


def test_they_are_documented_in_openapi(api):
    paths = api.get("/openapi.json").json()["paths"]
    operation = paths["/series"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"signal", "start", "end"}
    assert "422" in operation["responses"]
    assert "/signals" in paths
