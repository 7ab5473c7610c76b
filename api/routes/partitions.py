"""``GET /partitions``: which days and hours are processed, as a grid.

An hour's state is that of its **newest** slice row, the one of the highest
job id: job ids grow with creation, so the most recent request for an hour
decides what the grid shows. A re-run that is still queued therefore shows as
queued, even if an earlier run succeeded; ``last_succeeded_at`` keeps that
earlier success visible. Hours no job ever covered are ``never_run``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response
from sqlalchemy import text

from api.deps import TargetConn
from api.errors import problem_responses
from api.params import IsoDate
from windfarm.config import get_settings

router = APIRouter(tags=["partitions"])

# One statement builds the whole answer. DISTINCT ON keeps the newest slice of
# each hour (the etl_slice_hour index serves the range); the window aggregate
# runs before DISTINCT ON, so it sees every run of the hour. generate_series
# supplies the hours no job covered.
_QUERY = text(
    """
    WITH latest AS (
        SELECT DISTINCT ON (s.slice_start)
               s.slice_start, s.job_id, s.state, s.attempts, s.error,
               s.enqueued_at, s.started_at, s.finished_at,
               max(s.finished_at) FILTER (WHERE s.state = 'succeeded')
                   OVER (PARTITION BY s.slice_start) AS last_succeeded_at
          FROM etl_slice s
         WHERE s.slice_start >= :first AND s.slice_start < :after
         ORDER BY s.slice_start, s.job_id DESC
    ), cells AS (
        SELECT h.hour, l.*
          FROM generate_series(CAST(:first AS timestamp),
                               CAST(:after AS timestamp) - interval '1 hour',
                               interval '1 hour') AS h(hour)
          LEFT JOIN latest l ON l.slice_start = h.hour
    ), days AS (
        SELECT CAST(hour AS date) AS day,
               json_agg(json_build_object(
                   'hour', extract(hour FROM hour)::int,
                   'slice_start', hour,
                   'state', coalesce(state, 'never_run'),
                   'job_id', job_id,
                   'attempts', attempts,
                   'enqueued_at', enqueued_at,
                   'started_at', started_at,
                   'finished_at', finished_at,
                   'error', error,
                   'last_succeeded_at', last_succeeded_at
               ) ORDER BY hour) AS hours,
               json_build_object(
                   'succeeded', count(*) FILTER (WHERE state = 'succeeded'),
                   'failed', count(*) FILTER (WHERE state = 'failed'),
                   'running', count(*) FILTER (WHERE state = 'running'),
                   'queued', count(*) FILTER (WHERE state = 'queued'),
                   'never_run', count(*) FILTER (WHERE state IS NULL)
               ) AS counts
          FROM cells
         GROUP BY 1
    )
    SELECT json_build_object(
               'start_date', CAST(:first AS date),
               'end_date', CAST(:after AS date) - 1,
               'days', json_agg(json_build_object('date', day, 'counts', counts, 'hours', hours)
                                ORDER BY day)
           )::text
      FROM days
    """
)

_EXAMPLE = {
    "start_date": "2025-12-05",
    "end_date": "2025-12-05",
    "days": [{
        "date": "2025-12-05",
        "counts": {"succeeded": 23, "failed": 1, "running": 0, "queued": 0, "never_run": 0},
        "hours": [{
            "hour": 0, "slice_start": "2025-12-05T00:00:00", "state": "failed", "job_id": 7,
            "attempts": 1, "enqueued_at": "2025-12-06T02:00:00.1",
            "started_at": "2025-12-06T02:00:01",
            "finished_at": "2025-12-06T02:00:01.5", "error": "HTTP 404 from the API",
            "last_succeeded_at": "2025-12-05T01:05:02",
        }],
    }],
}


def resolve_days(start: dt.date, end: dt.date | None, max_days: int) -> tuple[dt.date, dt.date]:
    """The inclusive days a request asks for, or a 422 saying why not."""
    end = start if end is None else end
    if end == dt.date.max:
        raise HTTPException(422, f"end_date {end} is out of range")
    if end < start:
        raise HTTPException(422, f"end_date {end} is before start_date {start}")
    days = (end - start).days + 1
    if days > max_days:
        raise HTTPException(
            422,
            f"{start} .. {end} is {days} days, more than {max_days} (JOBS_MAX_DAYS); "
            "ask for a shorter range",
        )
    return start, end


@router.get(
    "/partitions",
    response_class=Response,
    responses={200: {"content": {"application/json": {"example": _EXAMPLE}}},
               **problem_responses(422)},
)
def get_partitions(
    conn: TargetConn,
    start_date: Annotated[IsoDate, Query(description="first day, ISO 8601 (UTC)")],
    end_date: Annotated[
        IsoDate | None, Query(description="last day, inclusive; default: start_date")
    ] = None,
) -> Response:
    """The state of every hour slice of each day, as its newest job left it."""
    first, last = resolve_days(start_date, end_date, get_settings().jobs_max_days)
    bounds = {
        "first": dt.datetime.combine(first, dt.time.min),
        "after": dt.datetime.combine(last + dt.timedelta(days=1), dt.time.min),
    }
    return Response(content=conn.scalar(_QUERY, bounds), media_type="application/json")
