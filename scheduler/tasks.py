"""Scheduled tasks. Beat only sends their messages; workers run them."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from kombu.exceptions import ChannelError

from scheduler.reconcile import reconcile as reconcile_pass
from windfarm import jobs
from windfarm.config import get_settings
from windfarm.db import target_engine
from windfarm.timeutil import HOUR, hour_floor, utcnow
from workers.celery_app import app
from workers.dispatch import enqueue_slices

log = logging.getLogger(__name__)

# The hourly task also creates any of the hours before the previous one that
# have no job yet, so a beat that was down a little while catches up.
HOURLY_LOOKBACK = 3


def _scheduled_job(origin: str, key: str, hours: list[datetime]) -> int | None:
    """Store and send one scheduled job unless one with ``key`` exists (another beat)."""
    with target_engine().begin() as conn:
        job_id = jobs.create_job(
            conn, origin=origin, start_date=hours[0].date(), end_date=hours[-1].date(),
            hours=hours, dedupe_key=key,
        )
    if job_id is None:
        return None
    enqueue_slices(job_id, hours)
    return job_id


def hourly_jobs(now: datetime) -> list[int]:
    """Jobs for the last complete hour (and any recent hour still without one)."""
    last = hour_floor(now) - HOUR
    created = []
    for back in range(HOURLY_LOOKBACK - 1, -1, -1):
        hour = last - back * HOUR
        job_id = _scheduled_job("hourly", f"hourly:{hour.isoformat()}", [hour])
        if job_id is not None:
            created.append(job_id)
    return created


def daily_job(now: datetime) -> int | None:
    """The job for all 24 hours of yesterday (UTC), to pick up late data."""
    day = now.date() - timedelta(days=1)
    return _scheduled_job("daily", f"daily:{day.isoformat()}", jobs.job_slices(day, day))


@app.task(name="scheduler.enqueue_hourly", ignore_result=True)
def enqueue_hourly() -> list[int]:
    return hourly_jobs(utcnow())


@app.task(name="scheduler.enqueue_daily", ignore_result=True)
def enqueue_daily() -> int | None:
    return daily_job(utcnow())


def broker_queue_empty() -> bool:
    """Whether the slice queue holds no message (False when it cannot be told)."""
    queue = get_settings().etl_queue
    try:
        with app.connection_for_read() as conn:
            declared = conn.default_channel.queue_declare(queue=queue, passive=True)
            return declared.message_count == 0
    except ChannelError as exc:
        # Redis drops an empty list, so an empty queue may not "exist".
        if "NOT_FOUND" in str(exc):
            return True
        log.warning("reconcile: cannot read the length of queue %s: %s", queue, exc)
        return False
    except Exception as exc:  # noqa: BLE001 - an unknown answer must not look empty
        log.warning("reconcile: cannot read the length of queue %s: %s", queue, exc)
        return False


@app.task(name="scheduler.reconcile", ignore_result=True)
def reconcile() -> dict[str, int]:
    settings = get_settings()
    with target_engine().connect() as conn:
        outcome = reconcile_pass(
            conn,
            timeout_s=settings.etl_slice_timeout_s,
            queue_empty=broker_queue_empty(),
            send=enqueue_slices,
        )
    if outcome.resent or outcome.settled:
        log.info("reconcile: %d slice(s) re-sent, %d job(s) settled",
                 outcome.resent, outcome.settled)
    return {"resent": outcome.resent, "settled": outcome.settled, "skipped": int(outcome.skipped)}
