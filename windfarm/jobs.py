"""Job bookkeeping in the target database.

A job is created with all its slices in one transaction before anything is
sent to the broker, so the database always knows what work is outstanding.
Slice states move ``queued -> running -> succeeded | failed``; a job's status
and counts are derived from its slices when read, so they are never stale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from windfarm.db import autocommit
from windfarm.models import Job, Slice
from windfarm.timeutil import day_hours, days_between

TERMINAL = ("succeeded", "failed")
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class SliceError:
    slice_start: datetime
    message: str


@dataclass
class JobView:
    """What ``GET /jobs/{id}`` shows of a job."""

    id: int
    status: str
    origin: str
    start_date: date
    end_date: date
    slices_total: int
    slices_succeeded: int
    slices_failed: int
    slices_running: int
    slices_pending: int
    rows_written: int
    created_at: datetime
    finished_at: datetime | None
    errors: list[SliceError] = field(default_factory=list)


def job_slices(start_date: date, end_date: date) -> list[datetime]:
    """The slice starts of ``[start_date, end_date]``, every UTC hour."""
    return [hour for day in days_between(start_date, end_date) for hour in day_hours(day)]


def create_job(
    conn: Connection,
    *,
    origin: str,
    start_date: date,
    end_date: date | None = None,
    hours: list[datetime] | None = None,
    dedupe_key: str | None = None,
) -> int | None:
    """Store a job and its slices; the new id, or None when ``dedupe_key`` exists.

    ``hours`` narrows the job to those slices (the hourly schedule uses one);
    by default the job covers every hour of ``[start_date, end_date]``.
    """
    end_date = end_date or start_date
    hours = hours if hours is not None else job_slices(start_date, end_date)
    values = dict(
        origin=origin,
        start_date=start_date,
        end_date=end_date,
        slices_total=len(hours),
        dedupe_key=dedupe_key,
    )
    stmt = pg_insert(Job).values(**values).returning(Job.id)
    if dedupe_key is not None:
        stmt = stmt.on_conflict_do_nothing(index_elements=[Job.dedupe_key])
    job_id = conn.scalar(stmt)
    if job_id is None:
        return None
    conn.execute(insert(Slice), [{"job_id": job_id, "slice_start": h} for h in hours])
    return job_id


def mark_enqueued(conn: Connection, job_id: int, starts: list[datetime]) -> None:
    """Record that the broker accepted these slices' messages."""
    conn.execute(
        update(Slice)
        .where(Slice.job_id == job_id, Slice.slice_start.in_(starts))
        .values(enqueued_at=_now())
    )


def claim_slice(conn: Connection, job_id: int, slice_start: datetime) -> int | None:
    """Mark a slice running and count the attempt; the attempt number, or None
    when the slice is unknown or has already ended (a duplicate message)."""
    return conn.scalar(
        update(Slice)
        .where(
            Slice.job_id == job_id,
            Slice.slice_start == slice_start,
            Slice.state.not_in(TERMINAL),
        )
        .values(state="running", attempts=Slice.attempts + 1, started_at=_now())
        .returning(Slice.attempts)
    )


# Workers commit their bookkeeping without waiting for the WAL flush: a
# round trip's worth of fsync per statement otherwise. If PostgreSQL itself
# crashes, the last fraction of a second of such commits is lost, but whole
# transactions at a time: a slice's rows vanish together with its
# "succeeded" mark, so it reads as unfinished and the reconciler runs it again.
ASYNC_COMMIT_SQL = "SET LOCAL synchronous_commit TO off"

CLAIM_SLICE_SQL = """
UPDATE etl_slice
   SET state = 'running', attempts = attempts + 1, started_at = timezone('utc', now())
 WHERE job_id = %(job_id)s AND slice_start = %(slice_start)s
   AND state IN ('queued', 'running')
RETURNING attempts
"""


def claim_slice_now(engine: Engine, job_id: int, slice_start: datetime) -> int | None:
    """:func:`claim_slice`, committed at once in a single round trip."""
    with autocommit(engine).connect() as conn:
        return conn.exec_driver_sql(
            f"{ASYNC_COMMIT_SQL};\n{CLAIM_SLICE_SQL}",
            {"job_id": job_id, "slice_start": slice_start},
        ).scalar()


def complete_slice(conn: Connection, job_id: int, slice_start: datetime, rows_written: int) -> None:
    """Mark a slice succeeded; call it in the transaction that wrote its rows."""
    conn.execute(
        update(Slice)
        .where(Slice.job_id == job_id, Slice.slice_start == slice_start)
        .values(state="succeeded", rows_written=rows_written, error=None, finished_at=_now())
    )


# complete_slice as driver-level SQL (psycopg2 parameters), to be sent in the
# same multi-statement string as the slice's rows (workers/store.py).
COMPLETE_SLICE_SQL = """
UPDATE etl_slice
   SET state = 'succeeded', rows_written = %(rows_written)s, error = NULL,
       finished_at = timezone('utc', now())
 WHERE job_id = %(job_id)s AND slice_start = %(slice_start)s
"""


def fail_slice(conn: Connection, job_id: int, slice_start: datetime, message: str) -> None:
    """Mark a slice failed for good, keeping the reason."""
    conn.execute(
        update(Slice)
        .where(Slice.job_id == job_id, Slice.slice_start == slice_start)
        .values(state="failed", error=message[:MAX_ERROR_CHARS], finished_at=_now())
    )


def _now():
    return func.timezone("utc", func.now())


_COUNTS = (
    select(
        Slice.job_id,
        func.count().filter(Slice.state == "succeeded").label("succeeded"),
        func.count().filter(Slice.state == "failed").label("failed"),
        func.count().filter(Slice.state == "running").label("running"),
        func.count().filter(Slice.state == "queued").label("queued"),
        func.coalesce(func.sum(Slice.rows_written), 0).label("rows_written"),
        func.max(Slice.finished_at).label("last_finished"),
    )
    .group_by(Slice.job_id)
    .subquery()
)


def derive_status(*, succeeded: int, failed: int, running: int, queued: int) -> str:
    """A job's status from its slice counts."""
    if running == 0 and queued == 0:
        return "failed" if failed else "succeeded"
    if running or succeeded or failed:
        return "running"
    return "queued"


def _view(row: Any, errors: list[SliceError]) -> JobView:
    status = derive_status(
        succeeded=row.succeeded, failed=row.failed, running=row.running, queued=row.queued
    )
    return JobView(
        id=row.id,
        status=status,
        origin=row.origin,
        start_date=row.start_date,
        end_date=row.end_date,
        slices_total=row.slices_total,
        slices_succeeded=row.succeeded,
        slices_failed=row.failed,
        slices_running=row.running,
        slices_pending=row.queued + row.running,
        rows_written=row.rows_written,
        created_at=row.created_at,
        finished_at=row.last_finished if status in TERMINAL else None,
        errors=errors,
    )


def _job_rows():
    return select(
        Job.id,
        Job.origin,
        Job.start_date,
        Job.end_date,
        Job.slices_total,
        Job.created_at,
        _COUNTS.c.succeeded,
        _COUNTS.c.failed,
        _COUNTS.c.running,
        _COUNTS.c.queued,
        _COUNTS.c.rows_written,
        _COUNTS.c.last_finished,
    ).join(_COUNTS, _COUNTS.c.job_id == Job.id)


def _errors(conn: Connection, job_ids: list[int]) -> dict[int, list[SliceError]]:
    rows = conn.execute(
        select(Slice.job_id, Slice.slice_start, Slice.error)
        .where(Slice.job_id.in_(job_ids), Slice.state == "failed")
        .order_by(Slice.job_id, Slice.slice_start)
    )
    found: dict[int, list[SliceError]] = {}
    for job_id, start, message in rows:
        found.setdefault(job_id, []).append(SliceError(start, message or ""))
    return found


def get_job(conn: Connection, job_id: int) -> JobView | None:
    row = conn.execute(_job_rows().where(Job.id == job_id)).one_or_none()
    if row is None:
        return None
    return _view(row, _errors(conn, [job_id]).get(job_id, []))


def list_jobs(conn: Connection, *, limit: int = 50) -> list[JobView]:
    """The newest ``limit`` jobs, newest first."""
    rows = conn.execute(_job_rows().order_by(Job.id.desc()).limit(limit)).all()
    errors = _errors(conn, [r.id for r in rows]) if rows else {}
    return [_view(r, errors.get(r.id, [])) for r in rows]


def settle_jobs(conn: Connection) -> int:
    """Store the final status of jobs whose slices have all ended; how many were settled."""
    result = conn.execute(
        text(
            """
            UPDATE etl_job j
               SET status = CASE WHEN s.failed > 0 THEN 'failed' ELSE 'succeeded' END,
                   finished_at = s.last_finished
              FROM (SELECT job_id,
                           count(*) FILTER (WHERE state = 'failed') AS failed,
                           count(*) FILTER (WHERE state IN ('queued', 'running')) AS open,
                           max(finished_at) AS last_finished
                      FROM etl_slice GROUP BY job_id) s
             WHERE s.job_id = j.id AND s.open = 0 AND j.finished_at IS NULL
            """
        )
    )
    return result.rowcount

