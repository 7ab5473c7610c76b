"""``GET /partitions`` over HTTP, in process, with the real target database.

Jobs and slices are made with the bookkeeping functions the API and workers
use (``windfarm.jobs``), so the states are the ones a real run leaves.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import event, text

from tests.support.databases import Databases, in_process_client, module_databases
from windfarm import jobs
from windfarm.db import target_engine
from windfarm.timeutil import hour_floor, utcnow

DAY = date(2025, 12, 5)


def at(hour: int, day: date = DAY) -> datetime:
    return datetime.combine(day, datetime.min.time()) + timedelta(hours=hour)


@pytest.fixture(scope="module")
def module_dbs() -> Iterator[Databases]:
    """Databases of this module's own: its tests write jobs to the target."""
    with module_databases("parts") as dbs:
        yield dbs


@pytest.fixture
def api(module_dbs: Databases):
    """An in-process client on an empty job table."""
    with in_process_client(module_dbs, reset_sql="TRUNCATE etl_job CASCADE") as client:
        yield client


def job(*, start: date = DAY, end: date | None = None, hours: list[datetime] | None = None) -> int:
    hours = hours or jobs.job_slices(start, end or start)
    with target_engine().begin() as conn:
        job_id = jobs.store_job(conn, origin="api", hours=hours)
    assert job_id is not None
    return job_id


def succeed(job_id: int, hour: datetime, rows: int = 48) -> None:
    with target_engine().begin() as conn:
        assert jobs.claim_slice(conn, job_id, hour) is not None
        jobs.complete_slice(conn, job_id, hour, rows)


def fail(job_id: int, hour: datetime, message: str) -> None:
    with target_engine().begin() as conn:
        assert jobs.claim_slice(conn, job_id, hour) is not None
        jobs.fail_slice(conn, job_id, hour, message)


def start_running(job_id: int, hour: datetime) -> None:
    with target_engine().begin() as conn:
        assert jobs.claim_slice(conn, job_id, hour) is not None


def partitions(api, **params) -> dict:
    response = api.get("/partitions", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def hours_of(body: dict, day: date = DAY) -> list[dict]:
    (found,) = [d for d in body["days"] if d["date"] == day.isoformat()]
    return found["hours"]


def test_hours_no_job_covered_are_never_run(api):
    body = partitions(api, start_date="2025-12-05", end_date="2025-12-06")
    assert (body["start_date"], body["end_date"]) == ("2025-12-05", "2025-12-06")
    assert [d["date"] for d in body["days"]] == ["2025-12-05", "2025-12-06"]
    for day in body["days"]:
        # Days of 2025, long before the catch-up window: beat will not fill them.
        assert day["counts"] == {
            "succeeded": 0,
            "failed": 0,
            "running": 0,
            "queued": 0,
            "waiting": 0,
            "never_run": 24,
            "beyond_catchup": 24,
        }
        assert [h["hour"] for h in day["hours"]] == list(range(24))
        assert [h["slice_start"] for h in day["hours"]] == [
            f"{day['date']}T{h:02d}:00:00" for h in range(24)
        ]
        for cell in day["hours"]:
            assert cell["state"] == "never_run"
            assert cell["job_id"] is None and cell["error"] is None
            assert cell["started_at"] is None and cell["finished_at"] is None


def test_each_state_with_its_job_times_and_error(api):
    job_id = job()
    succeed(job_id, at(0))
    start_running(job_id, at(1))
    fail(job_id, at(2), "HTTP 404 from the API: no such hour")
    with target_engine().begin() as conn:
        jobs.mark_unsent(conn, job_id, [at(4)])
        jobs.claim_slice(conn, job_id, at(5))
        jobs.wait_slice(conn, job_id, at(5), "API unreachable", first_s=60, max_s=900)
    body = partitions(api, start_date="2025-12-05")
    cells = hours_of(body)
    assert [c["state"] for c in cells[:6]] == [
        "succeeded",
        "running",
        "failed",
        "queued",
        "queued",
        "waiting",
    ]
    assert all(c["job_id"] == job_id for c in cells)

    done, running, failed, enqueued, unsent, waits = cells[:6]
    assert done["finished_at"] is not None and done["attempts"] == 1
    assert done["last_succeeded_at"] == done["finished_at"]
    assert done["error"] is None
    assert running["started_at"] is not None and running["finished_at"] is None
    assert failed["error"] == "HTTP 404 from the API: no such hour"
    assert failed["finished_at"] is not None and failed["last_succeeded_at"] is None
    assert enqueued["enqueued_at"] is not None and enqueued["started_at"] is None
    assert unsent["enqueued_at"] is None
    assert waits["error"] == "API unreachable" and waits["retry_at"] is not None
    assert body["days"][0]["counts"] == {
        "succeeded": 1,
        "failed": 1,
        "running": 1,
        "queued": 20,
        "waiting": 1,
        "never_run": 0,
        "beyond_catchup": 1,
    }
    assert [c["beyond_catchup"] for c in cells[:6]] == [False, False, True, False, False, False]
    # Timestamps are ISO 8601, like the rest of the API.
    datetime.fromisoformat(done["finished_at"])


def test_hours_beat_will_not_fill_are_marked_beyond_the_catch_up_window(api, settings_env):
    settings_env(ETL_CATCHUP_DAYS="2")
    today = utcnow().date()
    body = partitions(
        api, start_date=(today - timedelta(days=3)).isoformat(), end_date=today.isoformat()
    )
    window = datetime.fromisoformat(body["catchup_from"])
    assert window == hour_floor(window)
    assert timedelta(days=2) <= utcnow() - window < timedelta(days=2, hours=1, minutes=1)
    for day in body["days"]:
        for cell in day["hours"]:
            start = datetime.fromisoformat(cell["slice_start"])
            assert cell["beyond_catchup"] == (start < window), cell


def test_the_newest_job_of_an_hour_wins(api):
    first = job()
    succeed(first, at(10))
    second = job(hours=[at(10)])
    fail(second, at(10), "source database unreachable")

    cell = hours_of(partitions(api, start_date="2025-12-05"))[10]
    assert (cell["state"], cell["job_id"]) == ("failed", second)
    assert cell["error"] == "source database unreachable"
    # The earlier success stays visible.
    assert cell["last_succeeded_at"] is not None

    third = job(hours=[at(10)])
    cell = hours_of(partitions(api, start_date="2025-12-05"))[10]
    assert (cell["state"], cell["job_id"], cell["error"]) == ("queued", third, None)
    assert cell["last_succeeded_at"] is not None

    succeed(third, at(10))
    cell = hours_of(partitions(api, start_date="2025-12-05"))[10]
    assert (cell["state"], cell["job_id"]) == ("succeeded", third)
    # The other hours still show the first job.
    assert hours_of(partitions(api, start_date="2025-12-05"))[9]["job_id"] == first


def test_newest_means_the_highest_job_id_not_the_last_to_finish(api):
    older = job(hours=[at(4)])
    newer = job(hours=[at(4)])
    succeed(newer, at(4))
    fail(older, at(4), "late failure of an old run")
    cell = hours_of(partitions(api, start_date="2025-12-05"))[4]
    assert (cell["state"], cell["job_id"]) == ("succeeded", newer)


def test_a_one_hour_job_covers_only_its_hour(api):
    job_id = job(hours=[at(7)])
    succeed(job_id, at(7))
    cells = hours_of(partitions(api, start_date="2025-12-05"))
    assert [c["hour"] for c in cells if c["state"] != "never_run"] == [7]


def test_jobs_of_other_days_stay_on_their_days(api):
    job_id = job(start=date(2025, 12, 4), end=date(2025, 12, 6))
    succeed(job_id, at(23, date(2025, 12, 4)))
    succeed(job_id, at(0, date(2025, 12, 6)))
    body = partitions(api, start_date="2025-12-05")
    assert [d["date"] for d in body["days"]] == ["2025-12-05"]
    assert body["days"][0]["counts"]["queued"] == 24
    body = partitions(api, start_date="2025-12-04", end_date="2025-12-06")
    assert [d["counts"]["succeeded"] for d in body["days"]] == [1, 0, 1]
    assert hours_of(body, date(2025, 12, 4))[23]["state"] == "succeeded"
    assert hours_of(body, date(2025, 12, 6))[0]["state"] == "succeeded"


def test_a_whole_year_in_one_query(api):
    job(start=date(2025, 1, 1), end=date(2025, 12, 31))
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    engine = target_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        body = partitions(api, start_date="2025-01-01", end_date="2026-01-01")
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(body["days"]) == 366
    assert body["days"][0]["counts"]["queued"] == 24
    assert body["days"][-1]["counts"]["never_run"] == 24
    assert len(statements) == 1, statements


def test_the_range_is_bounded_by_jobs_max_days(api, settings_env):
    response = api.get("/partitions", params={"start_date": "2025-01-01", "end_date": "2026-01-02"})
    assert response.status_code == 422
    assert response.json() == {
        "detail": "2025-01-01 .. 2026-01-02 is 367 days, more than 366 days (JOBS_MAX_DAYS); "
        "split it"
    }
    settings_env(JOBS_MAX_DAYS="3")
    assert (
        api.get(
            "/partitions", params={"start_date": "2025-12-01", "end_date": "2025-12-03"}
        ).status_code
        == 200
    )
    response = api.get("/partitions", params={"start_date": "2025-12-01", "end_date": "2025-12-04"})
    assert response.status_code == 422
    assert "more than 3 days (JOBS_MAX_DAYS)" in response.json()["detail"]


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({}, "start_date is required"),
        ({"end_date": "2025-12-05"}, "start_date is required"),
        (
            {"start_date": "yesterday"},
            "start_date 'yesterday' is not an ISO 8601 date such as 2025-12-05",
        ),
        (
            {"start_date": "2025-12-05", "end_date": "2025-13-01"},
            "end_date '2025-13-01' is not an ISO 8601 date such as 2025-12-05",
        ),
        (
            {"start_date": "2025-12-05", "end_date": "2025-12-04"},
            "end_date 2025-12-04 is before start_date 2025-12-05",
        ),
        (
            {"start_date": "9999-12-31"},
            "the hours of 9999-12-31 cannot be represented: its last slice would end after "
            "year 9999",
        ),
    ],
)
def test_bad_input_is_422_with_a_readable_message(api, params, detail):
    response = api.get("/partitions", params=params)
    assert response.status_code == 422
    assert response.json()["detail"] == detail


def test_it_is_documented_in_openapi(api):
    operation = api.get("/openapi.json").json()["paths"]["/partitions"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"start_date", "end_date"}
    assert "422" in operation["responses"]


def test_freshness_says_how_far_behind_the_statistics_are(api):
    empty = api.get("/freshness").json()
    assert (empty["newest_complete_hour"], empty["stale"], empty["failed_slices_24h"]) == (
        None,
        True,
        0,
    )
    last = hour_floor(utcnow()) - timedelta(hours=1)
    done = job(hours=[last - timedelta(hours=3), last])
    succeed(done, last)
    fail(done, last - timedelta(hours=3), "HTTP 404 from the API")
    fresh = api.get("/freshness").json()
    assert datetime.fromisoformat(fresh["newest_complete_hour"]) == last
    assert 0 <= fresh["lag_s"] < 3600 + 60 and fresh["stale"] is False
    assert fresh["failed_slices_24h"] == 1 and fresh["open_slices"] == 0
    # Three hours behind: past the alert's two.
    old = job(hours=[last - timedelta(hours=24)])
    with target_engine().begin() as conn:
        conn.execute(text("DELETE FROM etl_job WHERE id = :j"), {"j": done})
    succeed(old, last - timedelta(hours=24))
    assert api.get("/freshness").json()["stale"] is True
