"""Write one slice's statistics to the target database.

A slice write is idempotent in the strong sense: afterwards the target holds,
for the slice's hour and the configured signals, exactly the rows given: new
ones inserted, changed ones updated, rows of windows that lost their data
deleted. Writers of the same hour take turns on a transaction-scoped advisory
lock, so two runs at once neither deadlock nor leave a mixture of both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, Engine, text

from windfarm import jobs
from windfarm.db import autocommit
from windfarm.timeutil import HOUR
from workers.stats import StatRow

# The first key of the two-integer advisory lock space: "windfarm slice".
# The second key is the slice's hour since the epoch, so slices never collide.
SLICE_LOCK_SPACE = 0x57465331

_signal_ids: dict[tuple[int, str], dict[str, int]] = {}

_ENSURE_SIGNALS = text(
    # Sorted, so concurrent first runs insert in the same order and cannot deadlock.
    "INSERT INTO signal (name) SELECT n FROM unnest(CAST(:names AS varchar[])) AS n ORDER BY n "
    "ON CONFLICT (name) DO NOTHING"
)
_SIGNAL_IDS = text("SELECT name, id FROM signal WHERE name = ANY(CAST(:names AS varchar[]))")

# The write is planned once per connection (PREPARE) instead of per slice:
# planning this statement costs about half as much as running it.
_PREPARED = "windfarm_write_slice"

# Delete the hour's rows that are not in the new set, upsert the new set. Both
# see the same snapshot and touch disjoint keys. Unchanged values are not
# rewritten, so a rerun leaves no dead tuples. $1..$3: the new rows as
# parallel arrays; $4, $5: the hour; $6: the signals the slice owns.
_PREPARE_SQL = f"""
PREPARE {_PREPARED} (timestamp[], integer[], double precision[], timestamp, timestamp, integer[]) AS
WITH incoming AS (
    SELECT * FROM unnest($1, $2, $3) AS n("timestamp", signal_id, value)
), removed AS (
    DELETE FROM data d
     WHERE d."timestamp" >= $4 AND d."timestamp" < $5 AND d.signal_id = ANY($6)
       AND NOT EXISTS (SELECT 1 FROM incoming n
                        WHERE n."timestamp" = d."timestamp" AND n.signal_id = d.signal_id)
)
INSERT INTO data ("timestamp", signal_id, value)
SELECT "timestamp", signal_id, value FROM incoming ORDER BY "timestamp", signal_id
ON CONFLICT ("timestamp", signal_id) DO UPDATE SET value = EXCLUDED.value
 WHERE data.value IS DISTINCT FROM EXCLUDED.value
"""

# Driver-level SQL (psycopg2 parameters), so that the lock, the write and the
# slice's bookkeeping can travel as one multi-statement string.
_LOCK_SQL = "SELECT pg_advisory_xact_lock(%(space)s, %(key)s)"
_WRITE_SQL = (
    f"EXECUTE {_PREPARED} (%(ts)s, %(ids)s, %(vals)s, %(start)s, %(end)s, %(signals)s)"
)
_BATCH_SQL = ";\n".join((jobs.ASYNC_COMMIT_SQL, _LOCK_SQL, _WRITE_SQL, jobs.COMPLETE_SLICE_SQL))


def _prepare(conn: Connection) -> None:
    """PREPARE the write on this database connection, once in its life."""
    info = conn.connection.info
    if not info.get(_PREPARED):
        conn.exec_driver_sql(_PREPARE_SQL)
        info[_PREPARED] = True


def signal_ids(engine: Engine, names: Sequence[str]) -> dict[str, int]:
    """Ids of the named signals, creating missing ones; cached per process and database.

    Runs in its own committed transaction, so the cache never holds the id of
    a signal whose creation was rolled back.
    """
    key = (os.getpid(), engine.url.render_as_string(hide_password=True))
    cached = _signal_ids.setdefault(key, {})
    missing = sorted(set(names) - cached.keys())
    if missing:
        with engine.begin() as conn:
            conn.execute(_ENSURE_SIGNALS, {"names": missing})
            found = {name: id_ for name, id_ in conn.execute(_SIGNAL_IDS, {"names": missing})}
        cached.update(found)
    return {name: cached[name] for name in names}


def forget_signal_ids() -> None:
    """Drop the cache (a test that empties the ``signal`` table needs this)."""
    _signal_ids.clear()


def slice_lock_key(hour: datetime) -> int:
    """The second advisory-lock key of the slice starting at ``hour``."""
    return int((hour - datetime(1970, 1, 1)) // HOUR)


def _array(items) -> str:
    """A PostgreSQL array literal: psycopg2 sends one string instead of
    adapting every element, and the server casts it in one go."""
    return "{" + ",".join(items) + "}"


def _write_params(hour: datetime, rows: Sequence[StatRow], ids: dict[str, int]) -> dict:
    end = hour + HOUR
    outside = [r for r in rows if not hour <= r.timestamp < end]
    if outside:
        raise ValueError(f"{len(outside)} row(s) outside the slice {hour.isoformat()}")
    ordered = sorted((r.timestamp, ids[r.signal], r.value) for r in rows)
    return {
        "space": SLICE_LOCK_SPACE,
        "key": slice_lock_key(hour),
        # repr() is the shortest text that reads back as the same double.
        "ts": _array(r[0].isoformat() for r in ordered),
        "ids": _array(str(r[1]) for r in ordered),
        "vals": _array(repr(r[2]) for r in ordered),
        "start": hour,
        "end": end,
        "signals": _array(str(i) for i in sorted(ids.values())),
        "rows": len(ordered),
    }


def write_slice(
    conn: Connection, hour: datetime, rows: Sequence[StatRow], *, ids: dict[str, int]
) -> int:
    """Make the target's rows of ``[hour, hour + 1 h)`` for the signals in ``ids``
    exactly ``rows``; the number of rows the hour now holds.

    Call it inside a transaction: the lock is held until that transaction ends.
    """
    params = _write_params(hour, rows, ids)
    _prepare(conn)
    conn.exec_driver_sql(_LOCK_SQL, params)
    conn.exec_driver_sql(_WRITE_SQL, params)
    return params["rows"]


def commit_slice(
    engine: Engine, job_id: int, hour: datetime, rows: Sequence[StatRow], *, ids: dict[str, int]
) -> int:
    """:func:`write_slice` and the slice's ``succeeded`` mark, committed together in
    one round trip; the number of rows the hour now holds.

    The statements go as one string on a connection without an explicit
    transaction; PostgreSQL runs such a string as one transaction, so either
    all of it commits or none does, and the lock lasts until the end. The
    commit does not wait for the WAL flush (see ``jobs.ASYNC_COMMIT_SQL``).
    """
    params = _write_params(hour, rows, ids)
    params.update(job_id=job_id, slice_start=hour, rows_written=params["rows"])
    with autocommit(engine).connect() as conn:
        _prepare(conn)
        conn.exec_driver_sql(_BATCH_SQL, params)
    return params["rows_written"]
