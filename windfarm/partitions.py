"""The partition grid: the state of every hour slice of a range of days.

An hour's state is that of its **newest** slice row, the one of the highest
job id: job ids grow with creation, so the most recent request for an hour
decides what the grid shows. A re-run that is still queued therefore shows as
queued, even if an earlier run succeeded; ``last_succeeded_at`` keeps that
earlier success visible. Hours no job ever covered are ``never_run``.

An hour that neither succeeded nor is open, and is older than the scheduler's
catch-up window, is marked ``beyond_catchup``: beat will not fill it; a
person may post it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, text

from windfarm.config import Settings
from windfarm.models import OPEN_STATES, SliceState, sql_list
from windfarm.timeutil import hour_floor

_FILLED = sql_list((SliceState.SUCCEEDED, *OPEN_STATES))

# One statement builds the whole answer. For each hour of the range, two index
# probes: the newest run (etl_slice_hour, backwards) and the newest success
# (etl_slice_succeeded): a year with a hundred runs an hour reads a couple of
# rows per hour, not every run.
_GRID = text(
    f"""
    WITH cells AS (
        SELECT h.hour, l.*, ok.last_succeeded_at,
               coalesce(l.state NOT IN {_FILLED}, true) AND h.hour < :catchup_from
                   AS beyond_catchup
          FROM generate_series(CAST(:first AS timestamp),
                               CAST(:after AS timestamp) - interval '1 hour',
                               interval '1 hour') AS h(hour)
          LEFT JOIN LATERAL (
               SELECT s.job_id, s.state, s.attempts, s.error, s.enqueued_at, s.started_at,
                      s.finished_at, s.retry_at
                 FROM etl_slice s WHERE s.slice_start = h.hour
                ORDER BY s.job_id DESC LIMIT 1) l ON true
          LEFT JOIN LATERAL (
               SELECT max(s.finished_at) AS last_succeeded_at FROM etl_slice s
                WHERE s.slice_start = h.hour AND s.state = '{SliceState.SUCCEEDED}') ok ON true
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
                   'retry_at', retry_at,
                   'error', error,
                   'last_succeeded_at', last_succeeded_at,
                   'beyond_catchup', beyond_catchup
               ) ORDER BY hour) AS hours,
               json_build_object(
                   'succeeded', count(*) FILTER (WHERE state = '{SliceState.SUCCEEDED}'),
                   'failed', count(*) FILTER (WHERE state = '{SliceState.FAILED}'),
                   'running', count(*) FILTER (WHERE state = '{SliceState.RUNNING}'),
                   'queued', count(*) FILTER (WHERE state = '{SliceState.QUEUED}'),
                   'waiting', count(*) FILTER (WHERE state = '{SliceState.WAITING}'),
                   'never_run', count(*) FILTER (WHERE state IS NULL),
                   'beyond_catchup', count(*) FILTER (WHERE beyond_catchup)
               ) AS counts
          FROM cells
         GROUP BY 1
    )
    SELECT json_build_object(
               'start_date', CAST(:first AS date),
               'end_date', CAST(:after AS date) - 1,
               'catchup_from', CAST(:catchup_from AS timestamp),
               'days', json_agg(json_build_object('date', day, 'counts', counts, 'hours', hours)
                                ORDER BY day)
           )::text
      FROM days
    """
)


def catchup_start(now: dt.datetime, settings: Settings) -> dt.datetime:
    """The first hour beat's catch-up fills: ``ETL_CATCHUP_DAYS`` days back."""
    return hour_floor(now) - dt.timedelta(days=settings.etl_catchup_days)


def grid(conn: Connection, first: dt.date, last: dt.date, *, catchup_from: dt.datetime) -> str:
    """The grid of ``[first, last]`` as JSON text."""
    return conn.scalar(
        _GRID,
        {
            "first": dt.datetime.combine(first, dt.time.min),
            "after": dt.datetime.combine(last + dt.timedelta(days=1), dt.time.min),
            "catchup_from": catchup_from,
        },
    )
