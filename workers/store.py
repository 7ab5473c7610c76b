"""Write one slice's statistics to the target database, newest read winning.

A slice write is idempotent in the strong sense: afterwards the target holds,
for the slice's hour and the configured signals, exactly the rows given: new
ones inserted, changed ones updated, rows of windows that lost their data
deleted.

Copies of one hour (a redelivered message, two jobs over the same day) take
turns on the hour's advisory lock, and a copy holds it from *before* it reads
the source until its write has committed (:class:`HourSession`). So the copy
that read the source last also writes last: statistics from an older read
never overwrite those of a newer one, and the copies never deadlock or mix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from windfarm import jobs
from windfarm.db import autocommit, first_row
from windfarm.timeutil import HOUR
from workers.errors import EtlError
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


def _as_prepared(name: str, sql: str) -> tuple[str, str]:
    """``PREPARE`` and ``EXECUTE`` texts for a statement of windfarm/jobs.py: its
    ``%(param)s`` become ``$1``, ``$2``... in order of first appearance (their
    types inferred by PostgreSQL), and the EXECUTE passes them back by name."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    body = re.sub(r"%\((\w+)\)s", number, sql)
    return f"PREPARE {name} AS {body}", f"EXECUTE {name} ({', '.join(f'%({n})s' for n in names)})"


# The bookkeeping statements a slice runs, planned once per connection too:
# planning them costs as much as running them (about 0.45 ms a slice).
_CLAIM = _as_prepared("windfarm_claim", jobs.CLAIM_SQL)
_COMPLETE = _as_prepared("windfarm_complete", jobs.COMPLETE_SQL)
_FAIL = _as_prepared("windfarm_fail", jobs.FAIL_SQL)
_SETTLE = _as_prepared("windfarm_settle", jobs.SETTLE_SQL)
# The connection's own settings come with them: its commits (all of them
# slices' bookkeeping and rows) do not wait for the WAL flush.
_PREPARE_ALL = ";\n".join(
    (jobs.ASYNC_COMMIT_SQL, _PREPARE_SQL, _CLAIM[0], _COMPLETE[0], _FAIL[0], _SETTLE[0])
)

# Driver-level SQL (psycopg2 parameters), so that several statements travel
# as one string: one round trip each for the claim and for the write.
_LOCK_SQL = "SELECT pg_advisory_lock(%(space)s, %(key)s)"
_UNLOCK_SQL = "SELECT pg_advisory_unlock(%(space)s, %(key)s)"
# Waits its turn on the hour, then claims the slice; the claim commits at once.
_CLAIM_BATCH = ";\n".join((_LOCK_SQL, _CLAIM[1]))
_WRITE_SQL = f"EXECUTE {_PREPARED} (%(ts)s, %(ids)s, %(vals)s, %(start)s, %(end)s, %(signals)s)"
# The rows and the slice's end commit together; then the hour's lock is
# released and the job settled. The settle comes last: a batch's result is its
# last statement's, the job it ended (if any).
_COMMIT_BATCH = ";\n".join(
    (
        "BEGIN",
        _WRITE_SQL,
        _COMPLETE[1],
        "COMMIT",
        _UNLOCK_SQL,
        _SETTLE[1],
    )
)
_FAIL_BATCH = ";\n".join(
    (
        "BEGIN",
        _FAIL[1],
        "COMMIT",
        _SETTLE[1],
    )
)
_HOLDS_STATISTICS = text(
    'SELECT EXISTS (SELECT FROM data WHERE "timestamp" >= :start AND "timestamp" < :end '
    "AND signal_id = ANY(:ids))"
)


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


def slice_lock_key(hour: datetime) -> int:
    """The second advisory-lock key of the slice starting at ``hour``."""
    return int((hour - datetime(1970, 1, 1)) // HOUR)


def _array(items) -> str:
    """A PostgreSQL array literal: psycopg2 sends one string instead of
    adapting every element, and the server casts it in one go."""
    return "{" + ",".join(items) + "}"


def _rows_params(hour: datetime, rows: Sequence[StatRow], ids: dict[str, int]) -> dict:
    end = hour + HOUR
    # Six windows an hour: each timestamp is checked and spelled once. The
    # statement orders the rows itself (ORDER BY in the INSERT).
    stamps: dict[datetime, str] = {}
    for stamp in {r.timestamp for r in rows}:
        if not hour <= stamp < end:
            raise ValueError(
                f"a row at {stamp.isoformat()} is outside the slice {hour.isoformat()}"
            )
        stamps[stamp] = stamp.isoformat()
    id_texts = {name: str(id_) for name, id_ in ids.items()}
    return {
        "ts": _array([stamps[r.timestamp] for r in rows]),
        "ids": _array([id_texts[r.signal] for r in rows]),
        # repr() is the shortest text that reads back as the same double.
        "vals": _array(map(repr, [r.value for r in rows])),
        "start": hour,
        "end": end,
        "signals": _array(str(i) for i in sorted(ids.values())),
        "rows_written": len(rows),
    }


class HourSession:
    """One slice's turn on its hour: a connection that holds the hour's
    session-level advisory lock from the claim until the result is committed.

    Use it through :func:`hour_session`; the lock is released by the commit's
    own round trip, or when the session ends however it ends.
    """

    def __init__(self, conn: Connection, job_id: int, hour: datetime) -> None:
        self.conn = conn
        self.job_id = job_id
        self.hour = hour
        self.locked = False
        # The job this slice's end settled (ended), if it did.
        self.ended: jobs.EndedJob | None = None
        self._params: dict[str, Any] = {
            "space": SLICE_LOCK_SPACE,
            "key": slice_lock_key(hour),
            "job_id": job_id,
            "slice_start": hour,
            "job_ids": [job_id],
        }

    def claim(self) -> jobs.Claim | None:
        """Wait for the hour, then claim the slice (see ``jobs.CLAIM_SQL``)."""
        self._prepare()
        row = first_row(self.conn, _CLAIM_BATCH, self._params)
        self.locked = True
        return jobs.Claim(*row) if row else None

    def holds_statistics(self, ids: dict[str, int]) -> bool:
        """Whether the target holds statistics of the hour for these signals."""
        return bool(
            self.conn.scalar(
                _HOLDS_STATISTICS,
                {"start": self.hour, "end": self.hour + HOUR, "ids": sorted(ids.values())},
            )
        )

    def commit(self, rows: Sequence[StatRow], ids: dict[str, int], *, values_ignored: int) -> int:
        """Make the hour's rows for the signals in ``ids`` exactly ``rows``, mark the
        slice succeeded, settle its job and release the hour; the rows written."""
        params = {
            **self._params,
            **_rows_params(self.hour, rows, ids),
            "values_ignored": values_ignored,
        }
        settled = first_row(self.conn, _COMMIT_BATCH, params)
        self.locked = False
        self.ended = jobs.EndedJob(*settled) if settled else None
        return params["rows_written"]

    def fail(self, message: str) -> None:
        """Mark the slice failed for good (if still open) and settle its job."""
        params = {**self._params, "message": message}
        settled = first_row(self.conn, _FAIL_BATCH, params)
        self.ended = jobs.EndedJob(*settled) if settled else None

    def release(self) -> None:
        # A connection found lost was closed: the server released its lock then.
        if self.locked and not self.conn.invalidated:
            first_row(self.conn, _UNLOCK_SQL, self._params)
        self.locked = False

    def _prepare(self) -> None:
        """PREPARE the slice's statements on this connection, once in its life."""
        info = self.conn.connection.info
        if not info.get(_PREPARED):
            self.conn.exec_driver_sql(_PREPARE_ALL)
            info[_PREPARED] = True


@contextmanager
def hour_session(engine: Engine, job_id: int, hour: datetime) -> Iterator[HourSession]:
    """An :class:`HourSession` on a connection of its own (autocommit).

    When the work ends with one of the pipeline's own errors (the API failed,
    say) the connection is sound and the hour is handed back. Any other error
    (the database, a time limit striking mid-statement) leaves the connection
    in doubt: it is closed instead of pooled, and the server rolls back and
    releases the lock with it.
    """
    with autocommit(engine).connect() as conn:
        session = HourSession(conn, job_id, hour)
        try:
            yield session
        except EtlError:
            _release_or_close(session)
            raise
        except BaseException:
            conn.invalidate()
            raise
        _release_or_close(session)


def _release_or_close(session: HourSession) -> None:
    try:
        session.release()
    except DBAPIError:
        session.conn.invalidate()
        raise
