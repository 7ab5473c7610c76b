"""``GET /data`` and ``GET /health`` against the real source database."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import create_engine, text

from tests.support.databases import Databases


def _source_rows(url: str, start: str, end: str) -> list[dict]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text('SELECT * FROM data WHERE "timestamp" BETWEEN :s AND :e ORDER BY "timestamp"'),
                {"s": start, "e": end},
            ).mappings()
            return [{**r, "timestamp": r["timestamp"].isoformat()} for r in rows]
    finally:
        engine.dispose()


def test_one_day_is_every_row_of_the_day_in_order(client, dbs: Databases):
    response = client.get("/data", params={"start": "2025-12-05T00:00:00"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert len(body) == 1440
    assert body[0]["timestamp"] == "2025-12-05T00:00:00"
    assert body[-1]["timestamp"] == "2025-12-05T23:59:00"  # end defaults to the end of the day
    assert body == _source_rows(dbs.source_url, "2025-12-05", "2025-12-05 23:59:59")


def test_end_is_inclusive(client):
    params = {"start": "2025-12-05T10:00", "end": "2025-12-05T10:03"}
    body = client.get("/data", params=params).json()
    assert [r["timestamp"] for r in body] == [f"2025-12-05T10:0{i}:00" for i in range(4)]


def test_variables_select_columns_and_repeat(client):
    response = client.get(
        "/data",
        params=[
            ("start", "2025-12-05T00:00"),
            ("end", "2025-12-05T00:09"),
            ("variables", "power"),
            ("variables", "wind_speed"),
            ("variables", "power"),
        ],
    )
    assert response.status_code == 200
    assert all(set(r) == {"timestamp", "wind_speed", "power"} for r in response.json())
    all_vars = client.get("/data", params={"start": "2025-12-05T00:00", "end": "2025-12-05T00:09"})
    assert set(all_vars.json()[0]) == {"timestamp", "wind_speed", "power", "ambient_temprature"}


def test_nulls_are_null(client, dbs: Databases):
    engine = create_engine(dbs.source_url)
    with engine.connect() as conn:
        gap = conn.scalar(text('SELECT min("timestamp") FROM data WHERE power IS NULL'))
    engine.dispose()
    body = client.get("/data", params={"start": gap.isoformat(), "end": gap.isoformat()}).json()
    assert len(body) == 1 and body[0]["power"] is None


@pytest.mark.parametrize(
    ("start", "expected_first"),
    [
        ("2025-12-05T03:00:00+03:00", "2025-12-05T00:00:00"),
        ("2025-12-05T00:00:00Z", "2025-12-05T00:00:00"),
        ("2025-12-04T21:00:00-03:00", "2025-12-05T00:00:00"),
    ],
)
def test_offset_aware_input_is_converted_to_utc(client, start, expected_first):
    response = client.get("/data", params={"start": start})
    assert response.status_code == 200
    body = response.json()
    assert body[0]["timestamp"] == expected_first
    # The default end is the end of the UTC day of start.
    assert body[-1]["timestamp"] == "2025-12-05T23:59:00"


def test_a_range_without_data_is_an_empty_list(client):
    response = client.get("/data", params={"start": "2030-01-01T00:00"})
    assert response.status_code == 200 and response.json() == []


def test_a_month_is_allowed(client):
    response = client.get("/data", params={"start": "2025-12-01T00:00", "end": "2025-12-31T23:59"})
    assert response.status_code == 200 and len(response.json()) == 14_400


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "start is required"),
        ({"start": "yesterday"}, "start 'yesterday' is not an ISO 8601 date-time"),
        ({"start": "2025-13-01T00:00"}, "start '2025-13-01T00:00' is not an ISO 8601 date-time"),
        ({"start": "2025-12-05T00:00", "end": "noon"}, "end 'noon' is not an ISO 8601 date-time"),
        ({"start": "2025-12-05T10:00", "end": "2025-12-05T09:00"}, "is before start"),
        (
            {"start": "2025-12-05T00:00", "variables": "rotor_speed"},
            "variables.0 'rotor_speed' is not one of",
        ),
        (
            {"start": "2025-01-01T00:00", "end": "2025-03-01T00:00"},
            "longer than 31 days (DATA_MAX_DAYS)",
        ),
    ],
)
def test_bad_input_is_a_422_a_person_understands(client, params, message):
    response = client.get("/data", params=params)
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_maximum_range_is_configurable(client, settings_env):
    settings_env(DATA_MAX_DAYS="2")
    ok = client.get("/data", params={"start": "2025-12-01T00:00", "end": "2025-12-03T00:00"})
    assert ok.status_code == 200
    too_long = client.get("/data", params={"start": "2025-12-01T00:00", "end": "2025-12-03T00:01"})
    assert too_long.status_code == 422 and "2 days" in too_long.json()["detail"]


def test_health_is_ok_when_databases_answer(client):
    response = client.get("/health")
    assert response.status_code == 200
    from importlib.metadata import version

    assert response.json() == {
        "status": "ok",
        "version": version("windfarm-etl"),
        "source": "ok",
        "target": "ok",
    }


def test_health_is_503_when_a_database_is_unreachable(client, settings_env):
    from windfarm.db import dispose_engines

    settings_env(SOURCE_DATABASE_URL="postgresql+psycopg2://postgres:secret@127.0.0.1:1/source_db")
    dispose_engines()
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["source"] == "unreachable"
    assert "secret" not in response.text


def test_openapi_documents_the_endpoints(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/data", "/health"} <= set(paths)
    params = {p["name"] for p in paths["/data"]["get"]["parameters"]}
    assert params == {"start", "end", "variables"}


def test_timestamps_match_the_source_exactly(client, dbs: Databases):
    params = {"start": "2025-12-10T23:00", "end": "2025-12-11T01:00"}
    body = client.get("/data", params=params).json()
    assert len(body) == 60
    assert datetime.fromisoformat(body[-1]["timestamp"]) == datetime(2025, 12, 10, 23, 59)


def _kill_connections(url: str) -> int:
    """Terminate every session of ``url``'s database but this one, as a restart would."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            return len(
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).all()
            )
    finally:
        engine.dispose()


def test_reads_survive_the_source_dropping_every_pooled_connection(client, dbs: Databases):
    """The source's pooled connections are not pinged before use: a read that
    meets a dead one is tried once more on a new connection."""
    params = {"start": "2025-12-05T10:00", "end": "2025-12-05T10:59"}
    before = client.get("/data", params=params)
    config_before = client.get("/dashboard/config").json()
    assert before.status_code == 200
    assert _kill_connections(dbs.source_url) >= 1

    after = client.get("/data", params=params)
    assert after.status_code == 200 and after.json() == before.json()
    _kill_connections(dbs.source_url)
    assert client.get("/health").json()["source"] == "ok"
    _kill_connections(dbs.source_url)
    config_after = client.get("/dashboard/config").json()
    assert config_after["source_last_day"] == config_before["source_last_day"] is not None
