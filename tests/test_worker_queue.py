"""Jobs through the real queue: Redis, ``celery -A workers worker`` processes and
a real API server, checked against the PostgreSQL oracle."""

from __future__ import annotations

import os
import signal
import threading
from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.oracle import actual_rows, assert_target_matches_oracle
from tests.procs import FaultyProxy, queue_length, wait_for_job
from windfarm.db import target_engine
from workers.dispatch import submit_job


def day_start(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time())


def slices(job_id: int) -> dict[int, tuple]:
    """hour -> (state, attempts, enqueued) of a job's slices."""
    with target_engine().connect() as conn:
        rows = conn.execute(
            text("SELECT slice_start, state, attempts, enqueued_at IS NOT NULL FROM etl_slice "
                 "WHERE job_id = :j"),
            {"j": job_id},
        ).all()
    return {r[0].hour: tuple(r[1:]) for r in rows}


@pytest.fixture
def proxy_factory():
    started: list[FaultyProxy] = []

    def start(upstream: str, rule) -> FaultyProxy:
        started.append(FaultyProxy(upstream, rule))
        return started[-1]

    yield start
    for proxy in started:
        proxy.close()


def test_a_day_submitted_to_the_queue_is_processed_by_a_real_worker(dbs, worker):
    day = date(2025, 12, 2)
    job_id = submit_job(origin="test", start_date=day, end_date=day)
    view = wait_for_job(job_id, timeout=60, procs=(worker,))
    assert (view.status, view.slices_succeeded, view.slices_failed) == ("succeeded", 24, 0)
    assert view.errors == []
    compared = assert_target_matches_oracle(
        dbs.source_url, dbs.target_url, day_start(day), day_start(day) + timedelta(days=1)
    )
    assert view.rows_written == compared
    # Every slice was sent once, recorded as sent, and run once.
    assert slices(job_id) == {h: ("succeeded", 1, True) for h in range(24)}
    assert queue_length(os.environ["CELERY_BROKER_URL"], os.environ["ETL_QUEUE"]) == 0
    assert "workers.process_slice" in worker.log()


def test_a_permanent_api_failure_fails_its_slice_at_once(fresh_dbs, api_server, worker_factory,
                                                         proxy_factory):
    day = date(2025, 12, 3)
    proxy = proxy_factory(
        api_server.url,
        lambda path, n: (404, {"detail": "no such thing"}) if "T03:00:00" in path else None,
    )
    worker = worker_factory(proxy.url)
    job_id = submit_job(origin="test", start_date=day, end_date=day)
    view = wait_for_job(job_id, timeout=60, procs=(worker,))
    assert (view.status, view.slices_succeeded, view.slices_failed) == ("failed", 23, 1)
    [error] = view.errors
    assert error.slice_start == day_start(day) + timedelta(hours=3)
    assert "HTTP 404: no such thing" in error.message
    assert proxy.count("start=2025-12-03T03:00:00") == 1  # not retried
    assert slices(job_id)[3] == ("failed", 1, True)
    three = day_start(day) + timedelta(hours=3)
    assert actual_rows(fresh_dbs.target_url, three, three + timedelta(hours=1)) == {}
    assert_target_matches_oracle(fresh_dbs.source_url, fresh_dbs.target_url, day_start(day), three)


def test_transient_failures_are_retried_with_backoff_then_given_up(
    fresh_dbs, api_server, worker_factory, proxy_factory
):
    day = date(2025, 12, 7)

    def rule(path: str, n: int):
        # The first four requests (whatever slices they are for) and every
        # request for 05:00 find the API unavailable.
        if n < 4 or "T05:00:00" in path:
            return 503, {"detail": "try again later"}
        return None

    proxy = proxy_factory(api_server.url, rule)
    worker = worker_factory(proxy.url, ETL_MAX_RETRIES="2")
    job_id = submit_job(origin="test", start_date=day, end_date=day)
    view = wait_for_job(job_id, timeout=90, procs=(worker,))
    assert (view.status, view.slices_succeeded, view.slices_failed) == ("failed", 23, 1)
    [error] = view.errors
    assert error.slice_start == day_start(day) + timedelta(hours=5)
    assert error.message.startswith("gave up after 3 attempts: ")
    assert "HTTP 503: try again later" in error.message
    states = slices(job_id)
    assert states.pop(5) == ("failed", 3, True)
    assert proxy.count("T05:00:00") == 3
    # The slices hit by the first four 503s succeeded on a later attempt.
    assert {s for s, _, _ in states.values()} == {"succeeded"}
    # (05:00 cannot be among the first four requests: four other slices come first.)
    assert sum(attempts - 1 for _, attempts, _ in states.values()) == 4
    start, five = day_start(day), day_start(day) + timedelta(hours=5)
    assert_target_matches_oracle(fresh_dbs.source_url, fresh_dbs.target_url, start, five)
    assert_target_matches_oracle(fresh_dbs.source_url, fresh_dbs.target_url,
                                 five + timedelta(hours=1), start + timedelta(days=1))
    assert "retry 1 in" in worker.log()


@pytest.mark.slow
def test_a_slice_whose_worker_process_dies_is_redelivered(
    fresh_dbs, api_server, worker_factory, proxy_factory
):
    day = date(2025, 12, 8)
    in_flight = threading.Event()
    release = threading.Event()

    def rule(path: str, n: int):
        if "T02:00:00" in path and not in_flight.is_set():
            in_flight.set()
            release.wait(20)  # hold the request while its worker process is killed
            return 503, {"detail": "held"}
        return None

    proxy = proxy_factory(api_server.url, rule)
    worker = worker_factory(proxy.url, concurrency=1)
    [child] = worker.child_pids()
    job_id = submit_job(origin="test", start_date=day, end_date=day)
    assert in_flight.wait(30), worker.describe()
    os.kill(child, signal.SIGKILL)  # an OOM kill, say, in the middle of slice 02:00
    release.set()
    view = wait_for_job(job_id, timeout=60, procs=(worker,))
    assert (view.status, view.slices_succeeded) == ("succeeded", 24)
    # Requeued on worker loss (not acknowledged as failed), then run again.
    assert slices(job_id)[2] == ("succeeded", 2, True)
    assert_target_matches_oracle(fresh_dbs.source_url, fresh_dbs.target_url,
                                 day_start(day), day_start(day) + timedelta(days=1))


def test_enqueueing_thousands_of_slices_is_fast(fresh_dbs):
    import time

    from tests.procs import purge_queue
    from windfarm import jobs
    from workers.dispatch import enqueue_slices, store_job

    broker, queue = os.environ["CELERY_BROKER_URL"], os.environ["ETL_QUEUE"]
    first, last = date(2025, 1, 1), date(2025, 4, 30)  # 120 days, 2,880 slices
    job_id = store_job(origin="test", start_date=first, end_date=last)
    hours = jobs.job_slices(first, last)
    try:
        began = time.perf_counter()
        sent = enqueue_slices(job_id, hours)
        rate = sent / (time.perf_counter() - began)
        assert sent == len(hours) == 2880
        assert queue_length(broker, queue) == 2880
        with target_engine().connect() as conn:
            unsent = conn.scalar(text("SELECT count(*) FROM etl_slice WHERE job_id = :j AND "
                                      "enqueued_at IS NULL"), {"j": job_id})
        assert unsent == 0
        print(f"enqueued {sent} slices at {rate:,.0f} messages/s")
        # 3,000+/s on a 2-core laptop; the bound leaves room for a busy CI box.
        assert rate > 1000
    finally:
        purge_queue(broker, queue)
