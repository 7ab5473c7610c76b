"""Bookkeeping at scale: ``GET /jobs``, ``GET /jobs/{id}``, ``/partitions`` and a
reconciler pass over a target holding about a million slice rows.

The rows are made in SQL, the shape a year of operation leaves: a hundred
backfills of a whole year (so every hour has a hundred runs), daily and
hourly jobs, a few failed slices, and among the newest jobs two open
backfills (one half done) that ``GET /jobs`` must count live.
"""

from __future__ import annotations

import random
import time

import httpx
from sqlalchemy import Engine, text

YEAR_FIRST, YEAR_LAST = "2025-01-01", "2025-12-31"

_FILL = """
INSERT INTO etl_job (origin, start_date, end_date, first_hour, last_hour, slices_total, status,
                     slices_succeeded, slices_failed, rows_written, created_at, finished_at)
SELECT 'api', DATE '{first}', DATE '{last}', TIMESTAMP '{first}', TIMESTAMP '{last} 23:00',
       8760, 'succeeded', 8760, 0, 8760 * 48, TIMESTAMP '2026-01-01' + g * interval '1 minute',
       TIMESTAMP '2026-01-01' + g * interval '1 minute' + interval '40 seconds'
  FROM generate_series(1, :backfills) g;

INSERT INTO etl_slice (job_id, slice_start, state, attempts, rows_written, enqueued_at,
                       started_at, finished_at)
SELECT j.id, h, 'succeeded', 1, 48, j.created_at, j.created_at, j.finished_at
  FROM etl_job j,
       generate_series(TIMESTAMP '{first}', TIMESTAMP '{last} 23:00', interval '1 hour') h;

INSERT INTO etl_job (origin, priority, dedupe_key, start_date, end_date, first_hour, last_hour,
                     slices_total, status, slices_succeeded, rows_written, created_at, finished_at)
SELECT 'daily', true, 'daily:' || d::date, d::date, d::date, d, d + interval '23 hours', 24,
       'succeeded', 24, 24 * 48, d + interval '26 hours', d + interval '26 hours 5 seconds'
  FROM generate_series(TIMESTAMP '{first}', TIMESTAMP '{last}', interval '1 day') d;

INSERT INTO etl_job (origin, priority, dedupe_key, start_date, end_date, first_hour, last_hour,
                     slices_total, status, slices_succeeded, rows_written, created_at, finished_at)
SELECT 'hourly', true, 'hourly:' || h, h::date, h::date, h, h, 1, 'succeeded', 1, 48,
       h + interval '65 minutes', h + interval '65 minutes 1 second'
  FROM generate_series(TIMESTAMP '{first}', TIMESTAMP '{last} 23:00', interval '1 hour') h;

INSERT INTO etl_slice (job_id, slice_start, state, attempts, rows_written, enqueued_at,
                       started_at, finished_at)
SELECT j.id, h, 'succeeded', 1, 48, j.created_at, j.created_at, j.finished_at
  FROM etl_job j,
       generate_series(j.first_hour, j.last_hour, interval '1 hour') h
 WHERE j.origin IN ('daily', 'hourly');

-- Failed slices here and there, and the failed jobs they make.
UPDATE etl_slice SET state = 'failed', error = 'HTTP 404 from the API', rows_written = 0
 WHERE slice_start = TIMESTAMP '{first}' + interval '5 hours' AND mod(job_id, 7) = 0;
UPDATE etl_job j SET status = 'failed', slices_failed = 1, slices_succeeded = slices_total - 1
 WHERE EXISTS (SELECT FROM etl_slice s WHERE s.job_id = j.id AND s.state = 'failed');
"""

_OPEN = """
INSERT INTO etl_job (origin, start_date, end_date, first_hour, last_hour, slices_total, status,
                     created_at)
SELECT 'api', DATE '{first}', DATE '{last}', TIMESTAMP '{first}', TIMESTAMP '{last} 23:00',
       8760, 'running', timezone('utc', now())
  FROM generate_series(1, 2);

INSERT INTO etl_slice (job_id, slice_start, state, attempts, rows_written, enqueued_at,
                       started_at, finished_at)
SELECT j.id, h,
       CASE WHEN mod(j.id, 2) = 0 AND h < TIMESTAMP '2025-07-01' THEN 'succeeded' ELSE 'queued' END,
       0, 0, j.created_at, NULL, NULL
  FROM etl_job j,
       generate_series(TIMESTAMP '{first}', TIMESTAMP '{last} 23:00', interval '1 hour') h
 WHERE j.status = 'running';
"""


def fill(engine: Engine, *, backfills: int = 110) -> int:
    """Fill an empty target's bookkeeping; the slice rows it holds afterwards."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            _FILL.format(first=YEAR_FIRST, last=YEAR_LAST).replace(
                ":backfills", str(int(backfills))
            )
        )
        conn.exec_driver_sql(_OPEN.format(first=YEAR_FIRST, last=YEAR_LAST))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE etl_job")
        conn.exec_driver_sql("VACUUM ANALYZE etl_slice")
        return conn.scalar(text("SELECT count(*) FROM etl_slice"))


def _timed(client: httpx.Client, path: str, params: dict | None = None) -> float:
    began = time.perf_counter()
    client.get(path, params=params).raise_for_status()
    return (time.perf_counter() - began) * 1000


def measure(api_url: str, engine: Engine, *, requests: int = 100) -> dict:
    """Latencies of the bookkeeping reads through the API, in milliseconds."""
    from bench.run import percentile

    with engine.connect() as conn:
        ids = list(conn.scalars(text("SELECT id FROM etl_job")))
        open_ids = list(conn.scalars(text("SELECT id FROM etl_job WHERE status = 'running'")))
    rng = random.Random(5)
    out: dict[str, dict] = {}
    with httpx.Client(base_url=api_url, timeout=120) as client:
        cases = {
            "GET /jobs (limit 50)": lambda: _timed(client, "/jobs", {"limit": 50}),
            "GET /jobs/{id}": lambda: _timed(client, f"/jobs/{rng.choice(ids)}"),
            "GET /jobs/{id} (open, 8760 slices)": lambda: _timed(
                client, f"/jobs/{rng.choice(open_ids)}"
            ),
            "GET /partitions (a year)": lambda: _timed(
                client, "/partitions", {"start_date": YEAR_FIRST, "end_date": YEAR_LAST}
            ),
        }
        for label, call in cases.items():
            call()  # warm
            rounds = requests if "partitions" not in label else max(5, requests // 10)
            times = [call() for _ in range(rounds)]
            out[label] = {
                "p50_ms": percentile(times, 50),
                "p99_ms": percentile(times, 99),
                "requests": rounds,
            }
    return out


def reconcile_pass(engine: Engine) -> float:
    """One reconciler pass over the filled target (nothing to send), in milliseconds."""
    from scheduler.reconcile import reconcile

    began = time.perf_counter()
    reconcile(
        engine,
        timeout_s=300,
        lookback_s=130,
        bulk_empty=False,
        priority_empty=False,
        retention_days=36500,
        send=lambda *a, **k: 0,
    )
    return (time.perf_counter() - began) * 1000
