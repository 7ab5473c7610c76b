"""Job bookkeeping in the target database: storing jobs, one statement per slice
transition, settling jobs, and reading them back.

A job is stored with all its slices in one transaction before anything is sent
to the broker, so the database always knows what work is outstanding. A slice
moves only through these transitions, each one statement guarded so that an
ended slice never changes again::

    queued ──claim──▶ running ──complete──▶ succeeded
      ▲                 │  └─────fail────▶ failed
      │   requeue       │
      ├─────────────────┤  (a Celery retry is on its way)
      │                 └──wait──▶ waiting   (retries spent on a transient cause)
      └──────sent (the reconciler, once retry_at has passed)───┘

A job's status lives on its row and has one writer per step: the first claim
moves it from ``queued`` to ``running``, and :data:`SETTLE_SQL`, run after a
slice ends, ends the job once it has no open slice, storing its final counts.
Reads take those counts from the row of an ended job and count the slices of
an open one.

The statements use psycopg2's ``%(name)s`` parameters so that workers can send
several of them as one multi-statement string (one round trip); the functions
here run them one at a time, for every other caller and for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, text

from windfarm.models import (
    ENDED_JOB,
    OPEN_JOB,
    OPEN_STATES,
    JobStatus,
    SliceState,
    sql_list,
)
from windfarm.timeutil import day_hours, days_between

MAX_ERROR_CHARS = 2000
_OPEN = sql_list(OPEN_STATES)
_OPEN_JOB = sql_list(OPEN_JOB)
_NOW = "timezone('utc', now())"


class RangeError(ValueError):
    """A range of days that no job can cover; the message says why."""


def check_days(first: date, last: date, *, max_days: int) -> None:
    """Refuse ``[first, last]`` unless it is ordered, at most ``max_days`` long, and
    every hour of it can be represented (the last hour of 9999-12-31 cannot end)."""
    if last < first:
        raise RangeError(f"end_date {last} is before start_date {first}")
    days = (last - first).days + 1
    if days > max_days:
        raise RangeError(
            f"{first} .. {last} is {days} days, more than {max_days} days (JOBS_MAX_DAYS); split it"
        )
    if last == date.max:
        raise RangeError(
            f"the hours of {last} cannot be represented: its last slice would end after year 9999"
        )


def job_slices(start_date: date, end_date: date) -> list[datetime]:
    """The slice starts of ``[start_date, end_date]``, every UTC hour."""
    return [hour for day in days_between(start_date, end_date) for hour in day_hours(day)]


# --- Storing a job ------------------------------------------------------------------------

_STORE_JOB = text(
    """
    INSERT INTO etl_job (origin, priority, allow_empty, dedupe_key, start_date, end_date,
                         first_hour, last_hour, slices_total)
    VALUES (:origin, :priority, :allow_empty, :dedupe_key, CAST(:first AS date),
            CAST(:last AS date), :first, :last, :total)
    ON CONFLICT (dedupe_key) DO NOTHING
    RETURNING id
    """
)
_STORE_SLICES = text(
    "INSERT INTO etl_slice (job_id, slice_start, enqueued_at) "
    "SELECT :job_id, h, CASE WHEN :sent THEN timezone('utc', now()) END "
    "FROM unnest(CAST(:hours AS timestamp[])) AS h"
)


def store_job(
    conn: Connection,
    *,
    origin: str,
    hours: list[datetime],
    priority: bool = False,
    allow_empty: bool = False,
    dedupe_key: str | None = None,
    sent: bool = True,
) -> int | None:
    """Store a job of the slices ``hours`` (ordered); its id, or None when a job
    with ``dedupe_key`` exists.

    The slices are recorded as sent in the same transaction (``sent``): whoever
    stores a job sends it next, and records the slices the broker refuses with
    :func:`mark_unsent`. So every send is recorded, once, even if the sender
    dies right after publishing.
    """
    job_id = conn.scalar(
        _STORE_JOB,
        {
            "origin": origin,
            "priority": priority,
            "allow_empty": allow_empty,
            "dedupe_key": dedupe_key,
            "first": hours[0],
            "last": hours[-1],
            "total": len(hours),
        },
    )
    if job_id is not None:
        conn.execute(_STORE_SLICES, {"job_id": job_id, "hours": hours, "sent": sent})
    return job_id


# --- Slice transitions ----------------------------------------------------------------------

# Workers commit their bookkeeping without waiting for the WAL flush: a
# round trip's worth of fsync per statement otherwise. If PostgreSQL itself
# crashes, the last fraction of a second of such commits is lost, but whole
# transactions at a time: a slice's rows vanish together with its
# "succeeded" mark, so it reads as unfinished and the reconciler runs it again.
# Set once on each of the workers' own connections (workers/store.py).
ASYNC_COMMIT_SQL = "SET synchronous_commit TO off"

_SLICE = "job_id = %(job_id)s AND slice_start = %(slice_start)s"

# queued | running | waiting -> running. A claim that finds the slice running
# counts an unfinished attempt: the one before it never ended. The first claim
# of a job also starts the job.
CLAIM_SQL = f"""
WITH claimed AS (
    UPDATE etl_slice s
       SET state = '{SliceState.RUNNING}', attempts = s.attempts + 1,
           unfinished = s.unfinished + (s.state = '{SliceState.RUNNING}')::int,
           started_at = {_NOW}
      FROM etl_job j
     WHERE s.job_id = %(job_id)s AND s.slice_start = %(slice_start)s
       AND s.state IN {_OPEN} AND j.id = s.job_id
    RETURNING s.attempts, s.unfinished, j.allow_empty
), started AS (
    UPDATE etl_job SET status = '{JobStatus.RUNNING}'
     WHERE id = %(job_id)s AND status = '{JobStatus.QUEUED}' AND EXISTS (SELECT FROM claimed)
)
SELECT attempts, unfinished, allow_empty FROM claimed
"""

# open -> succeeded; in the transaction that wrote the slice's rows.
COMPLETE_SQL = f"""
UPDATE etl_slice
   SET state = '{SliceState.SUCCEEDED}', rows_written = %(rows_written)s,
       values_ignored = %(values_ignored)s, error = NULL, retry_at = NULL,
       finished_at = {_NOW}
 WHERE {_SLICE} AND state IN {_OPEN}
"""

# open -> failed, for good, with the reason.
FAIL_SQL = f"""
UPDATE etl_slice
   SET state = '{SliceState.FAILED}', error = left(%(message)s, {MAX_ERROR_CHARS}),
       retry_at = NULL, finished_at = {_NOW}
 WHERE {_SLICE} AND state IN {_OPEN}
"""

# running -> queued: a retry message is about to be sent, with the reason.
REQUEUE_SQL = f"""
UPDATE etl_slice
   SET state = '{SliceState.QUEUED}', error = left(%(message)s, {MAX_ERROR_CHARS}),
       enqueued_at = {_NOW}
 WHERE {_SLICE} AND state = '{SliceState.RUNNING}'
"""

# open -> waiting: retries spent on a transient cause. Due again after a wait
# that doubles with every wait, from %(first_s)s up to %(max_s)s seconds.
WAIT_SQL = f"""
UPDATE etl_slice
   SET state = '{SliceState.WAITING}', error = left(%(message)s, {MAX_ERROR_CHARS}),
       waits = waits + 1,
       retry_at = {_NOW} + make_interval(
           secs => least(%(max_s)s, %(first_s)s * power(2, least(waits, 32))))
 WHERE {_SLICE} AND state IN {_OPEN}
"""

# These slices are handed to the broker now: enqueued_at is the time of their
# last send, and a waiting slice is queued again.
SENT_SQL = f"""
UPDATE etl_slice
   SET enqueued_at = {_NOW}, retry_at = NULL,
       state = CASE WHEN state = '{SliceState.WAITING}' THEN '{SliceState.QUEUED}' ELSE state END
 WHERE job_id = %(job_id)s AND slice_start = ANY(%(starts)s) AND state IN {_OPEN}
"""

# The broker refused these: not sent after all, for the reconciler's next pass.
UNSENT_SQL = f"""
UPDATE etl_slice SET enqueued_at = NULL
 WHERE job_id = %(job_id)s AND slice_start = ANY(%(starts)s) AND state = '{SliceState.QUEUED}'
"""

# End the jobs among %(job_ids)s that have no open slice left, with their
# final counts. Cheap for a job with open slices (one index probe), so it runs
# after every slice that ends; run after the slice's commit, two slices ending
# at once cannot both miss that the other one ended.
SETTLE_SQL = f"""
WITH done AS MATERIALIZED (
    SELECT j.id FROM etl_job j
     WHERE j.id = ANY(%(job_ids)s) AND j.status IN {_OPEN_JOB}
       AND NOT EXISTS (SELECT FROM etl_slice o WHERE o.job_id = j.id AND o.state IN {_OPEN})
), counts AS (
    SELECT s.job_id,
           count(*) FILTER (WHERE s.state = '{SliceState.SUCCEEDED}') AS succeeded,
           count(*) FILTER (WHERE s.state = '{SliceState.FAILED}') AS failed,
           sum(s.rows_written) AS rows_written, sum(s.values_ignored) AS values_ignored,
           max(s.finished_at) AS finished_at
      FROM etl_slice s JOIN done ON done.id = s.job_id
     GROUP BY s.job_id
)
UPDATE etl_job j
   SET status = CASE WHEN c.failed > 0 THEN '{JobStatus.FAILED}'
                     ELSE '{JobStatus.SUCCEEDED}' END,
       slices_succeeded = c.succeeded, slices_failed = c.failed,
       rows_written = c.rows_written, values_ignored = c.values_ignored,
       finished_at = coalesce(c.finished_at, {_NOW})
  FROM counts c
 WHERE j.id = c.job_id AND j.status IN {_OPEN_JOB}
RETURNING j.id, j.origin, j.status, j.slices_total, j.slices_succeeded, j.slices_failed,
          j.rows_written, j.values_ignored, j.created_at, j.finished_at
"""


@dataclass(frozen=True)
class EndedJob:
    """A job that :data:`SETTLE_SQL` just ended, as it returns it."""

    id: int
    origin: str
    status: str
    slices_total: int
    slices_succeeded: int
    slices_failed: int
    rows_written: int
    values_ignored: int
    created_at: datetime
    finished_at: datetime


@dataclass(frozen=True)
class Claim:
    """A successful claim: the attempt's number, how many attempts before it
    never finished, and whether the job lets the slice erase an hour."""

    attempt: int
    unfinished: int
    allow_empty: bool


def _run(conn: Connection, sql: str, params: dict[str, Any]):
    return conn.exec_driver_sql(sql, params)


def claim_slice(conn: Connection, job_id: int, slice_start: datetime) -> Claim | None:
    """Mark a slice running; None when it is unknown or has already ended."""
    row = _run(conn, CLAIM_SQL, {"job_id": job_id, "slice_start": slice_start}).first()
    return Claim(*row) if row else None


def complete_slice(
    conn: Connection,
    job_id: int,
    slice_start: datetime,
    rows_written: int,
    *,
    values_ignored: int = 0,
) -> bool:
    """Mark an open slice succeeded; whether it was open."""
    params = {
        "job_id": job_id,
        "slice_start": slice_start,
        "rows_written": rows_written,
        "values_ignored": values_ignored,
    }
    return _run(conn, COMPLETE_SQL, params).rowcount == 1


def fail_slice(conn: Connection, job_id: int, slice_start: datetime, message: str) -> bool:
    """Mark an open slice failed for good, keeping the reason; whether it was open."""
    params = {"job_id": job_id, "slice_start": slice_start, "message": message}
    return _run(conn, FAIL_SQL, params).rowcount == 1


def requeue_slice(conn: Connection, job_id: int, slice_start: datetime, message: str) -> bool:
    """Put a running slice back to queued before its retry message is sent."""
    params = {"job_id": job_id, "slice_start": slice_start, "message": message}
    return _run(conn, REQUEUE_SQL, params).rowcount == 1


def wait_slice(
    conn: Connection,
    job_id: int,
    slice_start: datetime,
    message: str,
    *,
    first_s: float,
    max_s: float,
) -> bool:
    """Leave an open slice waiting for the reconciler (see :data:`WAIT_SQL`);
    whether it was open."""
    params = {
        "job_id": job_id,
        "slice_start": slice_start,
        "message": message,
        "first_s": first_s,
        "max_s": max_s,
    }
    return _run(conn, WAIT_SQL, params).rowcount == 1


def mark_sent(conn: Connection, job_id: int, starts: list[datetime]) -> int:
    """Record that these slices are being sent now; how many were open."""
    return _run(conn, SENT_SQL, {"job_id": job_id, "starts": starts}).rowcount


def mark_unsent(conn: Connection, job_id: int, starts: list[datetime]) -> int:
    """Record that the broker refused these queued slices after all."""
    return _run(conn, UNSENT_SQL, {"job_id": job_id, "starts": starts}).rowcount


def settle_jobs(conn: Connection, job_ids: list[int]) -> int:
    """End those of ``job_ids`` that have no open slice; how many ended."""
    return _run(conn, SETTLE_SQL, {"job_ids": job_ids}).rowcount


# --- Reading jobs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceNote:
    """A slice that did not succeed (yet), with its reason."""

    slice_start: datetime
    message: str
    retry_at: datetime | None = None


@dataclass
class JobView:
    """What ``GET /jobs/{id}`` shows of a job."""

    id: int
    status: str
    origin: str
    start_date: date
    end_date: date
    first_hour: datetime
    last_hour: datetime
    allow_empty: bool
    slices_total: int
    slices_succeeded: int
    slices_failed: int
    slices_running: int
    slices_waiting: int
    slices_pending: int
    rows_written: int
    values_ignored: int
    created_at: datetime
    finished_at: datetime | None
    errors: list[SliceNote] = field(default_factory=list)
    waiting: list[SliceNote] = field(default_factory=list)

    @property
    def ended(self) -> bool:
        return self.status in ENDED_JOB


def _count(state: SliceState) -> str:
    return f"count(*) FILTER (WHERE s.state = '{state}')"


# An ended job's counts are on its row; an open job's are counted from its
# slices (the lateral subquery is skipped for ended jobs).
_JOBS = f"""
SELECT j.id, j.status, j.origin, j.start_date, j.end_date, j.first_hour, j.last_hour,
       j.allow_empty, j.slices_total, j.created_at, j.finished_at,
       coalesce(c.succeeded, j.slices_succeeded) AS succeeded,
       coalesce(c.failed, j.slices_failed) AS failed,
       coalesce(c.running, 0) AS running, coalesce(c.waiting, 0) AS waiting,
       coalesce(c.queued, 0) AS queued,
       coalesce(c.rows_written, j.rows_written) AS rows_written,
       coalesce(c.values_ignored, j.values_ignored) AS values_ignored
  FROM etl_job j
  LEFT JOIN LATERAL (
       SELECT {_count(SliceState.SUCCEEDED)} AS succeeded, {_count(SliceState.FAILED)} AS failed,
              {_count(SliceState.RUNNING)} AS running, {_count(SliceState.WAITING)} AS waiting,
              {_count(SliceState.QUEUED)} AS queued,
              coalesce(sum(s.rows_written), 0) AS rows_written,
              coalesce(sum(s.values_ignored), 0) AS values_ignored
         FROM etl_slice s
        WHERE s.job_id = j.id AND j.status IN {_OPEN_JOB}
  ) c ON j.status IN {_OPEN_JOB}
"""

_NOTES = text(
    f"""
    SELECT job_id, slice_start, coalesce(error, ''), retry_at, state FROM etl_slice
     WHERE job_id = ANY(:ids)
       AND (state = '{SliceState.FAILED}'
            OR (state = '{SliceState.WAITING}' AND job_id = ANY(:open_ids)))
     ORDER BY job_id, slice_start
    """
)


def _view(row: Any, notes: _Notes) -> JobView:
    errors, waiting = notes.get(row.id, ([], []))
    return JobView(
        id=row.id,
        status=row.status,
        origin=row.origin,
        start_date=row.start_date,
        end_date=row.end_date,
        first_hour=row.first_hour,
        last_hour=row.last_hour,
        allow_empty=row.allow_empty,
        slices_total=row.slices_total,
        slices_succeeded=row.succeeded,
        slices_failed=row.failed,
        slices_running=row.running,
        slices_waiting=row.waiting,
        slices_pending=row.queued + row.running + row.waiting,
        rows_written=row.rows_written,
        values_ignored=row.values_ignored,
        created_at=row.created_at,
        finished_at=row.finished_at,
        errors=errors,
        waiting=waiting,
    )


_Notes = dict[int, tuple[list[SliceNote], list[SliceNote]]]


def _notes(conn: Connection, rows: Sequence[Any]) -> _Notes:
    ids = [r.id for r in rows if r.failed or r.waiting]
    if not ids:
        return {}
    open_ids = [r.id for r in rows if r.waiting]
    found: _Notes = {}
    for job_id, start, message, retry_at, state in conn.execute(
        _NOTES, {"ids": ids, "open_ids": open_ids}
    ):
        errors, waiting = found.setdefault(job_id, ([], []))
        if state == SliceState.FAILED:
            errors.append(SliceNote(start, message))
        else:
            waiting.append(SliceNote(start, message, retry_at))
    return found


def get_job(conn: Connection, job_id: int) -> JobView | None:
    rows = conn.execute(text(f"{_JOBS} WHERE j.id = :id"), {"id": job_id}).all()
    return _view(rows[0], _notes(conn, rows)) if rows else None


def list_jobs(
    conn: Connection, *, limit: int = 50, status: str | None = None, origin: str | None = None
) -> list[JobView]:
    """The newest ``limit`` jobs, newest first, optionally of one status or origin."""
    where = " AND ".join(
        clause
        for clause, value in (("j.status = :status", status), ("j.origin = :origin", origin))
        if value is not None
    )
    sql = f"{_JOBS} {'WHERE ' + where if where else ''} ORDER BY j.id DESC LIMIT :limit"
    rows = conn.execute(text(sql), {"limit": limit, "status": status, "origin": origin}).all()
    notes = _notes(conn, rows)
    return [_view(r, notes) for r in rows]


_MISSING = text(
    f"""
    SELECT h FROM unnest(CAST(:hours AS timestamp[])) AS h
     WHERE NOT EXISTS (
           SELECT FROM etl_slice s
            WHERE s.slice_start = h AND s.state IN {sql_list((SliceState.SUCCEEDED, *OPEN_STATES))})
     ORDER BY h
    """
)


def missing_hours(conn: Connection, hours: list[datetime]) -> list[datetime]:
    """Those of ``hours`` with neither a succeeded nor an open slice, in order."""
    return list(conn.scalars(_MISSING, {"hours": hours})) if hours else []


_COVERING = text(
    f"""
    SELECT id FROM etl_job
     WHERE status IN {_OPEN_JOB} AND origin = :origin AND allow_empty = :allow_empty
       AND first_hour <= :first AND last_hour >= :last
     ORDER BY id DESC LIMIT 1
    """
)


def open_job_covering(
    conn: Connection, *, origin: str, hours: list[datetime], allow_empty: bool
) -> int | None:
    """The newest open job of ``origin`` whose range covers ``hours``, if any."""
    return conn.scalar(
        _COVERING,
        {"origin": origin, "allow_empty": allow_empty, "first": hours[0], "last": hours[-1]},
    )


def open_slices(conn: Connection) -> int:
    """Slices not yet ended, in every job."""
    return conn.scalar(text(f"SELECT count(*) FROM etl_slice WHERE state IN {_OPEN}"))


# --- Pruning ------------------------------------------------------------------------------------

_PRUNE = text(
    f"""
    DELETE FROM etl_job WHERE id IN (
        SELECT id FROM etl_job
         WHERE status IN {sql_list(ENDED_JOB)}
           AND finished_at < {_NOW} - make_interval(days => :days)
         ORDER BY finished_at LIMIT :batch)
    """
)


def prune_jobs(conn: Connection, *, older_than_days: int, batch: int = 500) -> int:
    """Delete up to ``batch`` jobs (with their slices) that ended more than
    ``older_than_days`` ago; the statistics they wrote stay. How many went."""
    return conn.execute(_PRUNE, {"days": older_than_days, "batch": batch}).rowcount
