"""Jobs through the real queue: Redis, ``celery -A workers worker`` processes and
a real API server, checked against the PostgreSQL oracle."""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import date, datetime, timedelta

import pytest

from tests.support.jobs import slice_rows
from tests.support.oracle import actual_rows, assert_target_matches_oracle
from tests.support.procs import purge_queue, queue_length
from tests.support.waiting import job_in_db, until, wait_for_job
from windfarm import jobs
from windfarm.dispatch import submit_job


def day_start(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time())


def submit_day(day: date) -> int:
    """Store and send a one-day job, as the CLI's --enqueue does; its id."""
    return submit_job(origin="cli", hours=jobs.job_slices(day, day)).job.id


def slices(job_id: int) -> dict[int, tuple]:
    """hour -> (state, attempts, enqueued) of a job's slices (of one day)."""
    rows = slice_rows(job_id, "state", "attempts", "enqueued_at IS NOT NULL")
    return {start.hour: tuple(row) for start, row in rows.items()}


def test_a_day_submitted_to_the_queue_is_processed_by_a_real_worker(dbs, worker):
    day = date(2025, 12, 2)
    job_id = submit_day(day)
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


def test_a_permanent_api_failure_fails_its_slice_at_once(
    fresh_dbs, api_server, worker_factory, proxies
):
    day = date(2025, 12, 3)
    proxy = proxies(
        api_server.url,
        lambda path, n: (404, {"detail": "no such thing"}) if "T03:00:00" in path else None,
    )
    worker = worker_factory(proxy.url)
    job_id = submit_day(day)
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


def test_transient_failures_are_retried_with_backoff_then_wait_until_the_cause_is_gone(
    fresh_dbs, api_server, worker_factory, proxies
):
    day = date(2025, 12, 7)
    five = day_start(day) + timedelta(hours=5)
    unavailable = threading.Event()
    unavailable.set()

    def rule(path: str, n: int):
        # The first four requests (whatever slices they are for) and every
        # request for 05:00 while the API is unavailable fail.
        if n < 4 or ("T05:00:00" in path and unavailable.is_set()):
            return 503, {"detail": "try again later"}
        return None

    proxy = proxies(api_server.url, rule)
    worker = worker_factory(proxy.url, ETL_MAX_RETRIES="2", ETL_RECONCILE_EVERY_S="1")
    job_id = submit_day(day)
    # 05:00 waits; the slices hit by the first four 503s succeed on a retry.
    view = until(
        lambda: job_in_db(job_id),
        lambda job: job.slices_waiting == 1 and job.slices_succeeded == 23,
        timeout=60,
        what="slice 05:00 waiting and the other 23 succeeded",
        procs=(worker,),
    )
    # A transient cause never fails a slice: it waits, and the job shows why.
    assert (view.status, view.slices_succeeded, view.slices_failed, view.slices_waiting) == (
        "running",
        23,
        0,
        1,
    )
    [waiting] = view.waiting
    assert waiting.slice_start == five
    assert "HTTP 503: try again later (after 3 attempts)" in waiting.message
    assert proxy.count("T05:00:00") == 3
    assert "retry 1 in" in worker.log()

    unavailable.clear()  # the cause is gone; the reconciler sends the slice again
    time.sleep(1.1)  # its first wait: ETL_RECONCILE_EVERY_S
    from scheduler.tasks import reconcile

    assert reconcile()["resent"] == 1
    view = wait_for_job(job_id, timeout=60, procs=(worker,))
    assert (view.status, view.slices_succeeded, view.slices_failed) == ("succeeded", 24, 0)
    states = slices(job_id)
    assert states.pop(5) == ("succeeded", 4, True)
    # The slices hit by the first four 503s succeeded on a later attempt.
    assert {s for s, _, _ in states.values()} == {"succeeded"}
    # (05:00 cannot be among the first four requests: four other slices come first.)
    assert sum(attempts - 1 for _, attempts, _ in states.values()) == 4
    assert_target_matches_oracle(
        fresh_dbs.source_url,
        fresh_dbs.target_url,
        day_start(day),
        day_start(day) + timedelta(days=1),
    )


@pytest.mark.slow
def test_a_slice_whose_worker_process_dies_is_redelivered(
    fresh_dbs, api_server, worker_factory, proxies
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

    proxy = proxies(api_server.url, rule)
    worker = worker_factory(proxy.url, concurrency=1)
    [child] = worker.child_pids()
    job_id = submit_day(day)
    assert in_flight.wait(30), worker.describe()
    os.kill(child, signal.SIGKILL)  # an OOM kill, say, in the middle of slice 02:00
    release.set()
    view = wait_for_job(job_id, timeout=60, procs=(worker,))
    assert (view.status, view.slices_succeeded) == ("succeeded", 24)
    # Requeued on worker loss (not acknowledged as failed), then run again.
    assert slices(job_id)[2] == ("succeeded", 2, True)
    assert_target_matches_oracle(
        fresh_dbs.source_url,
        fresh_dbs.target_url,
        day_start(day),
        day_start(day) + timedelta(days=1),
    )


def test_every_slice_of_a_large_job_is_sent_and_recorded_once(fresh_dbs):
    broker, queue = os.environ["CELERY_BROKER_URL"], os.environ["ETL_QUEUE"]
    first, last = date(2025, 1, 1), date(2025, 4, 30)  # 120 days, 2,880 slices
    try:
        view = submit_job(origin="cli", hours=jobs.job_slices(first, last)).job
        assert view.slices_total == 2880
        assert queue_length(broker, queue) == 2880
        unsent = [
            s for s, row in slice_rows(view.id, "enqueued_at").items() if row.enqueued_at is None
        ]
        assert len(unsent) == 0
    finally:
        purge_queue(broker, queue)
