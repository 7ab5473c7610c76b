"""The scheduler's control tasks. Beat sends them by name; workers run them,
in the priority lane, so that a backfill never delays them.

- hourly: a job for the last complete hour, then the catch-up: every hour of
  the last ``ETL_CATCHUP_DAYS`` days with neither a succeeded nor an open
  slice gets one (after a beat outage, or a fresh start); hours missing before
  that window are reported, not sent. Beat also sends it once at start.
- daily: all 24 hours of the previous day, to pick up late data.
- reconcile: ``scheduler/reconcile.py``.

Each is safe to run twice at once (two beats started by mistake): scheduled
jobs carry unique keys, the catch-up takes its turn on a lock, and reconciler
passes take turns.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import text

from scheduler.reconcile import reconcile as reconcile_pass
from windfarm import jobs
from windfarm.config import get_settings
from windfarm.db import target_engine
from windfarm.dispatch import queue_length, send_slices, submit_job
from windfarm.models import OPEN_STATES, Origin, SliceState, sql_list
from windfarm.partitions import catchup_start
from windfarm.queue import DAILY_TASK, HOURLY_TASK, RECONCILE_TASK, app, lane
from windfarm.timeutil import HOUR, hour_floor, utcnow

log = logging.getLogger(__name__)


def hourly_jobs(now: datetime) -> list[int]:
    """The job for the last complete hour and the catch-up job; the ids created."""
    last = hour_floor(now) - HOUR
    hourly = submit_job(
        origin=Origin.HOURLY, hours=[last], priority=True, dedupe_key=f"hourly:{last.isoformat()}"
    )
    caught_up = catch_up(now)
    created = [hourly.job] if hourly is not None else []
    return [view.id for view in (*created, caught_up) if view is not None]


def catch_up(now: datetime) -> jobs.JobView | None:
    """One job for every hour of the catch-up window that has neither a
    succeeded nor an open slice; None when there is none."""
    settings = get_settings()
    last = hour_floor(now) - HOUR
    first = window_start(now)
    hours = [first + i * HOUR for i in range(int((last - first) / HOUR) + 1)]
    submitted = submit_job(origin=Origin.CATCHUP, hours=hours, priority=True, only_missing=True)
    view = submitted.job if submitted is not None else None
    if view is not None:
        log.warning(
            "catch-up: job %d for %d hour(s) between %s and %s that never ran",
            view.id,
            view.slices_total,
            view.first_hour,
            view.last_hour,
            extra={"job_id": view.id},
        )
    _report_older(first, settings.etl_job_retention_days)
    return view


def window_start(now: datetime) -> datetime:
    """The first hour beat fills: ``ETL_CATCHUP_DAYS`` days back."""
    return catchup_start(now, get_settings())


_OLDER = text(
    f"""
    SELECT count(*), min(h), max(h)
      FROM generate_series(
               greatest(CAST(:since AS timestamp),
                        (SELECT min(slice_start) FROM etl_slice)),
               CAST(:before AS timestamp) - interval '1 hour', interval '1 hour') AS h
     WHERE NOT EXISTS (
           SELECT FROM etl_slice s
            WHERE s.slice_start = h AND s.state IN {sql_list((SliceState.SUCCEEDED, *OPEN_STATES))})
    """
)


def _report_older(before: datetime, retention_days: int) -> None:
    """Log the hours older than the window (since the oldest bookkeeping kept)
    that never succeeded: beat does not send them; a person may."""
    with target_engine().connect() as conn:
        count, first, last = conn.execute(
            _OLDER, {"since": before - timedelta(days=retention_days), "before": before}
        ).one()
    if count:
        log.warning(
            "catch-up: %d hour(s) between %s and %s, older than ETL_CATCHUP_DAYS, "
            "never succeeded; POST /jobs for them if they should",
            count,
            first,
            last,
        )


def daily_job(now: datetime) -> int | None:
    """The job for all 24 hours of yesterday (UTC), to pick up late data."""
    day = now.date() - timedelta(days=1)
    submitted = submit_job(
        origin=Origin.DAILY,
        hours=jobs.job_slices(day, day),
        priority=True,
        dedupe_key=f"daily:{day.isoformat()}",
    )
    return submitted.job.id if submitted is not None else None


@app.task(name=HOURLY_TASK, ignore_result=True)
def enqueue_hourly() -> list[int]:
    return hourly_jobs(utcnow())


@app.task(name=DAILY_TASK, ignore_result=True)
def enqueue_daily() -> int | None:
    return daily_job(utcnow())


@app.task(name=RECONCILE_TASK, ignore_result=True)
def reconcile() -> dict[str, int]:
    settings = get_settings()
    outcome = reconcile_pass(
        target_engine(),
        timeout_s=settings.etl_slice_timeout_s,
        # Claims since a little before the previous pass: see scheduler/reconcile.py.
        lookback_s=2 * settings.etl_reconcile_every_s + 10,
        bulk_empty=queue_length(lane(settings, priority=False)) == 0,
        priority_empty=queue_length(lane(settings, priority=True)) == 0,
        retention_days=settings.etl_job_retention_days,
        send=send_slices,
    )
    if outcome.resent or outcome.settled or outcome.pruned:
        log.info(
            "reconcile: %d slice(s) sent again, %d job(s) settled, %d job(s) pruned",
            outcome.resent,
            outcome.settled,
            outcome.pruned,
        )
    return {
        "resent": outcome.resent,
        "settled": outcome.settled,
        "pruned": outcome.pruned,
        "skipped": int(outcome.skipped),
    }
