"""``/jobs`` over HTTP, in process, with the real target database and Redis."""

from __future__ import annotations

import pytest
import redis

from tests.support.databases import Databases, in_process_client, module_databases
from tests.support.jobs import slice_rows


@pytest.fixture(scope="module")
def module_dbs():
    """Databases of this module's own: open jobs of other modules would cover its days."""
    with module_databases("jobs") as dbs:
        yield dbs


@pytest.fixture
def dbs(module_dbs: Databases) -> Databases:
    return module_dbs


@pytest.fixture
def client(module_dbs: Databases):
    """An in-process client on an empty job table."""
    with in_process_client(module_dbs, reset_sql="TRUNCATE etl_job CASCADE") as client:
        yield client


@pytest.fixture
def broker():
    """The test broker (Redis db 15), with this run's queue emptied before and after."""
    from windfarm.config import get_settings

    settings = get_settings()
    client = redis.Redis.from_url(settings.celery_broker_url)
    client.delete(settings.etl_queue)
    yield client, settings.etl_queue
    client.delete(settings.etl_queue)
    client.close()


def test_posting_a_day_stores_24_slices_and_sends_them(client, dbs: Databases, broker):
    redis_client, queue = broker
    response = client.post("/jobs", json={"date": "2025-12-05"})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["slices_total"] == 24 and job["slices_pending"] == 24
    assert (job["start_date"], job["end_date"]) == ("2025-12-05", "2025-12-05")
    slices = slice_rows(job["id"], "enqueued_at")  # the client made dbs current
    assert [start.hour for start in slices] == list(range(24))
    assert all(start.date().isoformat() == "2025-12-05" for start in slices)
    # The background send ran after the response: every slice is on the queue.
    assert all(s.enqueued_at is not None for s in slices.values())
    assert redis_client.llen(queue) == 24


def test_a_range_has_24_slices_a_day(client, broker):
    job = client.post("/jobs", json={"start_date": "2025-12-01", "end_date": "2025-12-10"}).json()
    assert job["slices_total"] == 240
    assert client.get(f"/jobs/{job['id']}").json()["slices_total"] == 240


def test_get_job_and_list_newest_first(client, broker):
    first = client.post("/jobs", json={"date": "2025-12-01"}).json()
    second = client.post("/jobs", json={"date": "2025-12-02"}).json()
    shown = client.get(f"/jobs/{first['id']}").json()
    for key in (
        "id",
        "status",
        "slices_total",
        "slices_succeeded",
        "slices_failed",
        "slices_pending",
        "rows_written",
        "created_at",
        "finished_at",
        "errors",
    ):
        assert key in shown
    listed = client.get("/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in listed] == [second["id"], first["id"]]


def test_a_job_shows_its_origin_hours_and_options_and_the_list_filters(client, broker):
    posted = client.post(
        "/jobs", json={"start_date": "2025-12-03", "end_date": "2025-12-04", "allow_empty": True}
    ).json()
    assert (posted["origin"], posted["first_hour"], posted["last_hour"]) == (
        "api",
        "2025-12-03T00:00:00",
        "2025-12-04T23:00:00",
    )
    assert posted["allow_empty"] is True and posted["waiting"] == []
    assert (posted["slices_waiting"], posted["values_ignored"]) == (0, 0)
    last = client.post("/jobs", json={"date": "9999-12-30"}).json()  # its last hour ends in time
    assert last["last_hour"] == "9999-12-30T23:00:00"
    queued = client.get("/jobs", params={"status": "queued", "origin": "api"}).json()
    assert {posted["id"], last["id"]} <= {j["id"] for j in queued}
    assert client.get("/jobs", params={"origin": "hourly"}).json() == []
    assert client.get("/jobs", params={"status": "done"}).status_code == 422
    assert client.get("/jobs", params={"origin": "anyone"}).status_code == 422


def test_a_repeated_post_returns_the_open_job_that_covers_it(client, broker):
    first = client.post("/jobs", json={"start_date": "2025-12-01", "end_date": "2025-12-03"})
    assert first.status_code == 202
    again = client.post("/jobs", json={"date": "2025-12-02"})
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == f"/jobs/{first.json()['id']}"
    # force makes a new job; so does a range the open job does not cover, or other options.
    forced = client.post("/jobs", json={"date": "2025-12-02", "force": True})
    wider = client.post("/jobs", json={"start_date": "2025-12-03", "end_date": "2025-12-04"})
    erasing = client.post("/jobs", json={"date": "2025-12-02", "allow_empty": True})
    ids = {r.json()["id"] for r in (first, forced, wider, erasing)}
    assert [r.status_code for r in (forced, wider, erasing)] == [202] * 3 and len(ids) == 4
    redis_client, queue = broker
    assert redis_client.llen(queue) == 24 * (3 + 1 + 2 + 1)  # nothing sent twice


def test_open_slices_are_capped(client, settings_env, broker):
    settings_env(ETL_MAX_OPEN_SLICES="30")
    assert client.post("/jobs", json={"date": "2025-12-01"}).status_code == 202
    refused = client.post("/jobs", json={"date": "2025-12-02"})
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "60"
    assert "24 slices are open" in refused.json()["detail"]
    assert "ETL_MAX_OPEN_SLICES" in refused.json()["detail"]
    assert len(client.get("/jobs").json()) == 1  # nothing stored


def test_unknown_job_is_404(client):
    response = client.get("/jobs/999999999")
    assert response.status_code == 404
    assert response.json()["detail"] == "there is no job 999999999"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "give date, or both start_date and end_date"),
        ({"date": "2025-12-32"}, "date '2025-12-32' is not an ISO 8601 date"),
        ({"date": "tomorrow"}, "is not an ISO 8601 date"),
        ({"start_date": "2025-12-05"}, "give date, or both start_date and end_date"),
        ({"start_date": "2025-12-05", "end_date": "2025-12-01"}, "is before start_date"),
        ({"date": "2025-12-05", "start_date": "2025-12-05", "end_date": "2025-12-06"}, "not both"),
        ({"date": "2025-12-05", "priority": 1}, "priority is not a known field"),
        (
            {"start_date": "2024-01-01", "end_date": "2025-12-31"},
            "more than 366 days (JOBS_MAX_DAYS)",
        ),
        ([1, 2], "Input should be a valid dictionary"),
        ({"date": "9999-12-31"}, "the hours of 9999-12-31 cannot be represented"),
        ({"start_date": "9999-12-01", "end_date": "9999-12-31"}, "cannot be represented"),
        ({"date": "2025-12-05", "allow_empty": "sometimes"}, "allow_empty"),
    ],
)
def test_bad_bodies_are_422_with_a_reason(client, body, message):
    response = client.post("/jobs", json=body)
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_malformed_json_is_422(client):
    response = client.post(
        "/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


def test_limit_is_bounded(client):
    assert client.get("/jobs", params={"limit": 0}).status_code == 422
    assert client.get("/jobs", params={"limit": 100000}).status_code == 422


def test_token_guards_posting_when_configured(client, settings_env, broker):
    settings_env(API_TOKEN="s3cret-token")
    missing = client.post("/jobs", json={"date": "2025-12-05"})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = client.post(
        "/jobs", json={"date": "2025-12-05"}, headers={"Authorization": "Bearer s3cret-tokeX"}
    )
    assert wrong.status_code == 401
    assert "s3cret" not in wrong.text
    right = client.post(
        "/jobs", json={"date": "2025-12-05"}, headers={"Authorization": "Bearer s3cret-token"}
    )
    assert right.status_code == 202
    # Reading stays open: the token guards work, not observation.
    assert client.get(f"/jobs/{right.json()['id']}").status_code == 200
