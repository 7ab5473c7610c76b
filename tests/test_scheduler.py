"""The beat schedule, scheduled jobs and the reconciler, on the real target database."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from scheduler.reconcile import find_lost_slices, reconcile
from scheduler.schedule import beat_schedule, parse_cron
from windfarm import jobs
from windfarm.config import Settings
from windfarm.db import target_engine


@pytest.fixture
def target(fresh_dbs):
    with target_engine().connect() as conn:
        yield conn


def _age(conn, job_id: int, *, created_s: float = 0, enqueued_s: float | None = None,
         started_s: float | None = None, state: str | None = None) -> None:
    """Move a job's clocks into the past, as if time had passed."""
    conn.execute(text("UPDATE etl_job SET created_at = created_at - make_interval(secs => :s) "
                      "WHERE id = :j"), {"s": created_s, "j": job_id})
    sets = []
    if enqueued_s is not None:
        sets.append("enqueued_at = timezone('utc', now()) - make_interval(secs => :e)")
    if started_s is not None:
        sets.append("started_at = timezone('utc', now()) - make_interval(secs => :st)")
    if state is not None:
        sets.append("state = :state")
    if sets:
        conn.execute(text(f"UPDATE etl_slice SET {', '.join(sets)} WHERE job_id = :j"),
                     {"e": enqueued_s, "st": started_s, "state": state, "j": job_id})
    conn.commit()


def _job(conn, day: date = date(2025, 12, 5), hours: int = 2) -> int:
    starts = jobs.job_slices(day, day)[:hours]
    job_id = jobs.create_job(conn, origin="api", start_date=day, hours=starts)
    conn.commit()
    return job_id


def test_cron_expressions_become_utc_crontabs():
    cron = parse_cron("5 * * * *")
    assert cron.minute == {5} and cron.hour == set(range(24))
    daily = parse_cron("0 2 * * *")
    assert daily.minute == {0} and daily.hour == {2}


def test_schedule_comes_from_settings():
    schedule = beat_schedule(Settings(etl_hourly_cron="15 * * * *", etl_daily_cron="30 3 * * *",
                                      etl_reconcile_every_s=20))
    assert schedule["etl-hourly"]["task"] == "scheduler.enqueue_hourly"
    assert schedule["etl-hourly"]["schedule"].minute == {15}
    assert schedule["etl-daily"]["schedule"].hour == {3}
    assert schedule["etl-reconcile"]["schedule"].total_seconds() == 20


def test_a_bad_cron_fails_at_start():
    with pytest.raises(ValidationError, match="5-field crontab"):
        Settings(etl_daily_cron="every day")


def test_never_sent_slices_are_sent_after_a_grace(target):
    job_id = _job(target)
    assert find_lost_slices(target, timeout_s=300, queue_empty=False) == {}
    _age(target, job_id, created_s=60)
    lost = find_lost_slices(target, timeout_s=300, queue_empty=False)
    assert lost == {job_id: [datetime(2025, 12, 5, 0), datetime(2025, 12, 5, 1)]}


def test_queued_slices_are_lost_only_when_the_queue_is_empty(target):
    job_id = _job(target)
    _age(target, job_id, created_s=900, enqueued_s=600)
    # A long, healthy backlog: messages still wait in the broker.
    assert find_lost_slices(target, timeout_s=300, queue_empty=False) == {}
    assert len(find_lost_slices(target, timeout_s=300, queue_empty=True)[job_id]) == 2
    # Recently sent ones are not lost even with an empty queue (a worker holds them).
    _age(target, job_id, enqueued_s=10)
    assert find_lost_slices(target, timeout_s=300, queue_empty=True) == {}


def test_running_slices_with_no_sign_of_work_are_lost(target):
    job_id = _job(target)
    _age(target, job_id, created_s=900, enqueued_s=900, started_s=600, state="running")
    assert len(find_lost_slices(target, timeout_s=300, queue_empty=False)[job_id]) == 2
    _age(target, job_id, started_s=5)
    assert find_lost_slices(target, timeout_s=300, queue_empty=False) == {}


def test_ended_slices_are_never_lost(target):
    job_id = _job(target)
    _age(target, job_id, created_s=900, enqueued_s=900, state="failed")
    assert find_lost_slices(target, timeout_s=300, queue_empty=True) == {}


def test_reconcile_sends_settles_and_takes_turns(target):
    job_id = _job(target)
    done = _job(target, day=date(2025, 12, 6))
    for start in jobs.job_slices(date(2025, 12, 6), date(2025, 12, 6))[:2]:
        jobs.complete_slice(target, done, start, 8)
    target.commit()
    _age(target, job_id, created_s=60)
    sent: list[tuple[int, list[datetime]]] = []

    def send(job, starts):
        sent.append((job, starts))
        return len(starts)

    # A second reconciler holding the lock makes this one skip its pass.
    with target_engine().connect() as other:
        other.execute(text("SELECT pg_advisory_xact_lock(hashtext('windfarm-etl reconcile'))"))
        assert reconcile(target, timeout_s=300, queue_empty=False, send=send).skipped
        target.rollback()
        other.rollback()
    outcome = reconcile(target, timeout_s=300, queue_empty=False, send=send)
    assert (outcome.resent, outcome.settled, outcome.skipped) == (2, 1, False)
    assert sent == [(job_id, [datetime(2025, 12, 5, 0), datetime(2025, 12, 5, 1)])]
    status = target.execute(
        text("SELECT status, finished_at IS NOT NULL FROM etl_job WHERE id = :j"), {"j": done}
    ).one()
    assert tuple(status) == ("succeeded", True)


def test_job_status_follows_its_slices(target):
    job_id = _job(target, hours=3)
    starts = jobs.job_slices(date(2025, 12, 5), date(2025, 12, 5))[:3]
    assert jobs.get_job(target, job_id).status == "queued"
    assert jobs.claim_slice(target, job_id, starts[0]) == 1
    assert jobs.get_job(target, job_id).status == "running"
    jobs.complete_slice(target, job_id, starts[0], 8)
    jobs.fail_slice(target, job_id, starts[1], "HTTP 404 from the API")
    view = jobs.get_job(target, job_id)
    assert (view.status, view.slices_succeeded, view.slices_failed, view.slices_pending) == (
        "running", 1, 1, 1)
    assert view.finished_at is None
    jobs.complete_slice(target, job_id, starts[2], 8)
    view = jobs.get_job(target, job_id)
    assert (view.status, view.rows_written) == ("failed", 16)
    assert view.finished_at is not None
    errors = [(e.slice_start, e.message) for e in view.errors]
    assert errors == [(starts[1], "HTTP 404 from the API")]
    # A duplicate message for an ended slice is not claimed again.
    assert jobs.claim_slice(target, job_id, starts[0]) is None


def test_dedupe_key_makes_a_second_scheduled_job_a_no_op(target):
    hour = [datetime(2025, 12, 5, 3)]
    first = jobs.create_job(target, origin="hourly", start_date=date(2025, 12, 5), hours=hour,
                            dedupe_key="hourly:2025-12-05T03:00:00")
    second = jobs.create_job(target, origin="hourly", start_date=date(2025, 12, 5), hours=hour,
                             dedupe_key="hourly:2025-12-05T03:00:00")
    assert first is not None and second is None
