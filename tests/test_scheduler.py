"""The beat schedule, job status, scheduled jobs, catch-up and the reconciler,
on the real target database (no broker: sends are recorded, not published)."""

from __future__ import annotations

import threading
from datetime import date, datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from scheduler import tasks as scheduler_tasks
from scheduler.reconcile import find_lost_slices, reconcile
from windfarm import jobs
from windfarm.config import Settings
from windfarm.db import target_engine
from windfarm.models import SliceState
from windfarm.queue import beat_schedule, parse_cron
from windfarm.timeutil import HOUR, day_hours

DAY = date(2025, 12, 5)


@pytest.fixture
def target(empty_target):
    with target_engine().connect() as conn:
        yield conn


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, list[datetime], bool]]:
    """What the scheduler's tasks send, instead of publishing it."""
    calls: list[tuple[int, list[datetime], bool]] = []

    def send(job_id, starts, *, priority=False):
        calls.append((job_id, list(starts), priority))
        return len(starts)

    monkeypatch.setattr("windfarm.dispatch.send_slices", send)
    return calls


def _age(
    conn,
    job_id: int,
    *,
    enqueued_s: float | None = None,
    started_s: float | None = None,
    state: str | None = None,
    starts: list[datetime] | None = None,
) -> None:
    """Move a job's slice clocks into the past, as if time had passed."""
    sets = []
    if enqueued_s is not None:
        sets.append("enqueued_at = timezone('utc', now()) - make_interval(secs => :e)")
    if started_s is not None:
        sets.append("started_at = timezone('utc', now()) - make_interval(secs => :st)")
    if state is not None:
        sets.append("state = :state")
    conn.execute(
        text(
            f"UPDATE etl_slice SET {', '.join(sets)} WHERE job_id = :j "
            "AND (CAST(:starts AS timestamp[]) IS NULL OR slice_start = ANY(:starts))"
        ),
        {"e": enqueued_s, "st": started_s, "state": state, "j": job_id, "starts": starts},
    )
    conn.commit()


def _job(
    conn, day: date = DAY, hours: int = 2, *, priority: bool = False, origin: str = "api"
) -> int:
    job_id = jobs.store_job(conn, origin=origin, hours=day_hours(day)[:hours], priority=priority)
    conn.commit()
    return job_id


def _lost(conn, *, bulk_empty: bool = False, priority_empty: bool = False) -> dict[int, list]:
    found = find_lost_slices(
        conn, timeout_s=300, lookback_s=130, bulk_empty=bulk_empty, priority_empty=priority_empty
    )
    return {item.job_id: item.starts for item in found}


# --- the schedule -------------------------------------------------------------------


def test_cron_expressions_become_utc_crontabs():
    cron = parse_cron("5 * * * *")
    assert cron.minute == {5} and cron.hour == set(range(24))
    daily = parse_cron("0 2 * * *")
    assert daily.minute == {0} and daily.hour == {2}


def test_schedule_comes_from_settings():
    schedule = beat_schedule(
        Settings(
            etl_hourly_cron="15 * * * *", etl_daily_cron="30 3 * * *", etl_reconcile_every_s=20
        )
    )
    assert schedule["etl-hourly"]["task"] == "scheduler.enqueue_hourly"
    assert schedule["etl-hourly"]["schedule"].minute == {15}
    assert schedule["etl-daily"]["schedule"].hour == {3}
    assert schedule["etl-reconcile"]["schedule"].total_seconds() == 20


def test_a_bad_cron_fails_at_start():
    with pytest.raises(ValidationError, match="5-field crontab"):
        Settings(etl_daily_cron="every day")


def test_control_tasks_travel_in_the_priority_lane():
    from windfarm.queue import app

    for name in ("scheduler.enqueue_hourly", "scheduler.enqueue_daily", "scheduler.reconcile"):
        queue = app.amqp.router.route({}, name, (), {})["queue"]
        assert queue.name == f"{app.conf.task_default_queue}.priority", name
    assert {q.name for q in app.conf.task_queues} == {
        app.conf.task_default_queue,
        f"{app.conf.task_default_queue}.priority",
    }


# --- a job's status --------------------------------------------------------------------


def test_job_status_is_stored_and_moved_by_its_slices(target):
    job_id = _job(target, hours=3)
    starts = day_hours(DAY)[:3]
    assert jobs.get_job(target, job_id).status == "queued"
    assert jobs.claim_slice(target, job_id, starts[0]).attempt == 1
    assert jobs.get_job(target, job_id).status == "running"
    jobs.complete_slice(target, job_id, starts[0], 8)
    jobs.claim_slice(target, job_id, starts[1])
    jobs.fail_slice(target, job_id, starts[1], "HTTP 404 from the API")
    assert jobs.settle_jobs(target, [job_id]) == 0  # one slice is still open
    view = jobs.get_job(target, job_id)
    assert (view.status, view.slices_succeeded, view.slices_failed, view.slices_pending) == (
        "running",
        1,
        1,
        1,
    )
    assert view.finished_at is None
    jobs.claim_slice(target, job_id, starts[2])
    jobs.wait_slice(target, job_id, starts[2], "API unreachable", first_s=60, max_s=900)
    view = jobs.get_job(target, job_id)
    assert (view.status, view.slices_waiting, view.slices_pending) == ("running", 1, 1)
    assert [(w.slice_start, w.message) for w in view.waiting] == [(starts[2], "API unreachable")]
    assert jobs.settle_jobs(target, [job_id]) == 0  # a waiting slice is not finished
    jobs.claim_slice(target, job_id, starts[2])
    jobs.complete_slice(target, job_id, starts[2], 8)
    assert jobs.settle_jobs(target, [job_id]) == 1
    target.commit()
    stored = target.execute(
        text(
            "SELECT status, slices_succeeded, slices_failed, rows_written, finished_at IS NOT NULL "
            "FROM etl_job WHERE id = :j"
        ),
        {"j": job_id},
    ).one()
    assert tuple(stored) == ("failed", 2, 1, 16, True)
    view = jobs.get_job(target, job_id)
    assert (view.status, view.rows_written, view.slices_pending) == ("failed", 16, 0)
    assert [(e.slice_start, e.message) for e in view.errors] == [
        (starts[1], "HTTP 404 from the API")
    ]
    assert jobs.settle_jobs(target, [job_id]) == 0  # settled once


def test_waits_grow_from_the_reconcile_period_to_a_cap(target):
    job_id = _job(target, hours=1)
    [hour] = day_hours(DAY)[:1]
    waits = []
    for _ in range(5):
        jobs.claim_slice(target, job_id, hour)
        jobs.wait_slice(target, job_id, hour, "API unreachable", first_s=60, max_s=300)
        waits.append(
            target.scalar(
                text(
                    "SELECT round(extract(epoch FROM retry_at - timezone('utc', now()))) "
                    "FROM etl_slice WHERE job_id = :j"
                ),
                {"j": job_id},
            )
        )
        jobs.mark_sent(target, job_id, [hour])
    assert [int(w) for w in waits] == [60, 120, 240, 300, 300]


def test_listing_filters_by_status_and_origin(target):
    api_job = _job(target, hours=1)
    hourly_job = _job(target, DAY + timedelta(days=1), hours=1, origin="hourly", priority=True)
    jobs.claim_slice(target, hourly_job, day_hours(DAY + timedelta(days=1))[0])
    target.commit()
    assert [v.id for v in jobs.list_jobs(target)] == [hourly_job, api_job]
    assert [v.id for v in jobs.list_jobs(target, origin="hourly")] == [hourly_job]
    assert [v.id for v in jobs.list_jobs(target, status="queued")] == [api_job]
    view = jobs.get_job(target, hourly_job)
    assert (view.first_hour, view.last_hour) == (datetime(2025, 12, 6), datetime(2025, 12, 6))


def test_far_dates_are_refused_before_anything_is_stored():
    with pytest.raises(jobs.RangeError, match="9999-12-31 cannot be represented"):
        jobs.check_days(date(9999, 12, 31), date(9999, 12, 31), max_days=366)
    jobs.check_days(date(9999, 12, 30), date(9999, 12, 30), max_days=366)
    with pytest.raises(jobs.RangeError, match="before start_date"):
        jobs.check_days(DAY, DAY - timedelta(days=1), max_days=366)
    with pytest.raises(jobs.RangeError, match="more than 3 days"):
        jobs.check_days(DAY, DAY + timedelta(days=3), max_days=3)


# --- lost slices --------------------------------------------------------------------------


def test_unsent_slices_are_sent_at_the_next_pass(target):
    job_id = _job(target)
    assert _lost(target) == {}  # recorded as sent when stored
    jobs.mark_unsent(target, job_id, day_hours(DAY)[:1])
    target.commit()
    assert _lost(target) == {job_id: [datetime(2025, 12, 5, 0)]}


def test_queued_slices_are_lost_when_their_lane_is_empty(target):
    job_id = _job(target)
    _age(target, job_id, enqueued_s=600)
    # A long, healthy backlog: messages still wait in the broker.
    assert _lost(target) == {}
    assert _lost(target, priority_empty=True) == {}  # the other lane says nothing
    assert len(_lost(target, bulk_empty=True)[job_id]) == 2
    # Recently sent ones are not lost even with an empty queue (a worker holds them).
    _age(target, job_id, enqueued_s=10)
    assert _lost(target, bulk_empty=True) == {}


def test_queued_slices_are_lost_once_their_lane_got_past_them(target):
    """A queue hands out messages in order: once a slice sent after this one
    was claimed long ago, this one's message is gone, backlog or not."""
    early = _job(target)
    late = _job(target, DAY + timedelta(days=1))
    other_lane = _job(target, DAY + timedelta(days=2), priority=True)
    _age(target, early, enqueued_s=700)
    _age(
        target,
        other_lane,
        enqueued_s=690,
        started_s=360,
        state="succeeded",
        starts=day_hours(DAY + timedelta(days=2))[:1],
    )
    assert _lost(target) == {}  # the priority lane's progress says nothing of the bulk lane
    _age(
        target,
        late,
        enqueued_s=650,
        started_s=250,
        state="succeeded",
        starts=day_hours(DAY + timedelta(days=1))[:1],
    )
    assert _lost(target) == {}  # claimed too recently: the early ones may be in a worker's hands
    _age(target, late, started_s=360, starts=day_hours(DAY + timedelta(days=1))[:1])
    lost = _lost(target)
    assert lost == {early: day_hours(DAY)[:2]}
    # Claims older than the lookback are not read again.
    _age(target, late, started_s=900, starts=day_hours(DAY + timedelta(days=1))[:1])
    assert _lost(target) == {}


def test_within_one_send_the_hours_before_a_claimed_one_are_lost(target):
    """A job's slices share their send time; they are published hour by hour."""
    job_id = _job(target, hours=4)
    hours = day_hours(DAY)[:4]
    _age(target, job_id, enqueued_s=700)
    _age(target, job_id, started_s=360, state="succeeded", starts=[hours[2]])
    assert _lost(target) == {job_id: hours[:2]}  # 03:00 was sent after 02:00: still queued


def test_running_slices_with_no_sign_of_work_are_lost(target):
    job_id = _job(target)
    _age(target, job_id, enqueued_s=900, started_s=600, state="running")
    assert len(_lost(target)[job_id]) == 2
    _age(target, job_id, started_s=5)
    assert _lost(target) == {}


def test_waiting_slices_are_sent_once_due(target):
    job_id = _job(target, hours=1)
    [hour] = day_hours(DAY)[:1]
    jobs.claim_slice(target, job_id, hour)
    jobs.wait_slice(target, job_id, hour, "API unreachable", first_s=60, max_s=900)
    target.commit()
    assert _lost(target, bulk_empty=True) == {}
    target.execute(text("UPDATE etl_slice SET retry_at = retry_at - interval '61 seconds'"))
    target.commit()
    assert _lost(target) == {job_id: [hour]}


def test_ended_slices_are_never_lost(target):
    job_id = _job(target)
    _age(target, job_id, enqueued_s=900, state="failed")
    assert _lost(target, bulk_empty=True, priority_empty=True) == {}


def test_a_pass_takes_settles_prunes_and_takes_turns(target):
    waiting = _job(target, hours=1)
    done = _job(target, DAY + timedelta(days=1), hours=2)
    old = _job(target, DAY + timedelta(days=2), hours=1)
    [hour] = day_hours(DAY)[:1]
    jobs.claim_slice(target, waiting, hour)
    jobs.wait_slice(target, waiting, hour, "API unreachable", first_s=0, max_s=0)
    for start in day_hours(DAY + timedelta(days=1))[:2]:
        jobs.claim_slice(target, done, start)
        jobs.complete_slice(target, done, start, 8)
    [old_hour] = day_hours(DAY + timedelta(days=2))[:1]
    jobs.claim_slice(target, old, old_hour)
    jobs.complete_slice(target, old, old_hour, 8)
    jobs.settle_jobs(target, [old])
    target.execute(
        text("UPDATE etl_job SET finished_at = finished_at - interval '91 days' WHERE id = :j"),
        {"j": old},
    )
    target.commit()
    calls: list = []

    def send(job_id, starts, *, priority):
        calls.append((job_id, starts, priority))
        return len(starts)

    def run():
        return reconcile(
            target_engine(),
            timeout_s=300,
            lookback_s=130,
            bulk_empty=False,
            priority_empty=False,
            retention_days=90,
            send=send,
        )

    # A second reconciler holding the lock makes this one skip its pass.
    with target_engine().connect() as other:
        other.execute(text("SELECT pg_advisory_xact_lock(hashtext('windfarm-etl reconcile'))"))
        assert run().skipped
        other.rollback()
    outcome = run()
    assert (outcome.resent, outcome.settled, outcome.pruned) == (1, 1, 1)
    assert calls == [(waiting, [hour], False)]
    states = dict(
        target.execute(
            text("SELECT job_id, state FROM etl_slice WHERE job_id = :j"), {"j": waiting}
        ).all()
    )
    assert states == {waiting: SliceState.QUEUED}  # taken: the next pass leaves it alone
    assert jobs.get_job(target, done).status == "succeeded"
    assert jobs.get_job(target, old) is None  # bookkeeping pruned
    assert run().resent == 0


# --- scheduled jobs --------------------------------------------------------------------------


def test_scheduled_jobs_are_created_once_per_key(target, sent):
    now = datetime(2025, 12, 6, 3, 5)
    first = scheduler_tasks.daily_job(now)
    assert scheduler_tasks.daily_job(now) is None  # another beat, same key
    view = jobs.get_job(target, first)
    assert (view.origin, view.slices_total, view.first_hour) == ("daily", 24, datetime(2025, 12, 5))
    assert sent == [(first, day_hours(DAY), True)]


def test_after_a_three_day_outage_beat_catches_up_once(target, sent, settings_env):
    settings_env(ETL_CATCHUP_DAYS="7")
    now = datetime(2025, 12, 10, 12, 5)
    # Beat ran until three days ago: every hour before that succeeded.
    outage = datetime(2025, 12, 7, 12)
    covered = [now.replace(minute=0) - timedelta(days=7) + i * HOUR for i in range(96)]
    job_id = jobs.store_job(target, origin="hourly", hours=covered, priority=True)
    for hour in covered:
        jobs.claim_slice(target, job_id, hour)
        jobs.complete_slice(target, job_id, hour, 48)
    # One hour of the outage is already queued again by a person.
    jobs.store_job(target, origin="api", hours=[outage + 5 * HOUR])
    target.commit()
    assert covered[-1] == outage - HOUR

    created = scheduler_tasks.hourly_jobs(now)
    assert len(created) == 2
    hourly, catch_up = (jobs.get_job(target, j) for j in created)
    assert (hourly.origin, hourly.first_hour) == ("hourly", datetime(2025, 12, 10, 11))
    assert catch_up.origin == "catchup"
    expected = [outage + i * HOUR for i in range(71) if i != 5]  # up to 10:00, not 11:00
    assert catch_up.slices_total == len(expected) == 70
    assert [s for s in sent if s[0] == catch_up.id] == [(catch_up.id, expected, True)]
    # At the next tick, and from a second beat at once, nothing is created twice.
    assert scheduler_tasks.hourly_jobs(now) == []
    results: list = []
    threads = [
        threading.Thread(target=lambda: results.append(scheduler_tasks.catch_up(now + HOUR)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    created_now = [v for v in results if v is not None]
    assert len(created_now) == 1 and created_now[0].slices_total == 1  # only 11:00 was left


def test_hours_older_than_the_window_are_reported_not_sent(target, sent, settings_env, caplog):
    settings_env(ETL_CATCHUP_DAYS="1")
    now = datetime(2025, 12, 10, 12, 5)
    first = jobs.store_job(target, origin="api", hours=[datetime(2025, 12, 5, 0)])
    jobs.claim_slice(target, first, datetime(2025, 12, 5, 0))
    jobs.complete_slice(target, first, datetime(2025, 12, 5, 0), 48)
    target.commit()
    view = scheduler_tasks.catch_up(now)
    assert view.first_hour == datetime(2025, 12, 9, 12) and view.slices_total == 24
    assert "older than ETL_CATCHUP_DAYS, never succeeded" in caplog.text
    assert "between 2025-12-05 01:00:00 and 2025-12-09 11:00:00" in caplog.text
