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

# One statement, one round trip: delete the hour's rows that are not in the
# new set, upsert the new set. Both see the same snapshot and touch disjoint
# keys. Unchanged values are not rewritten, so a rerun leaves no dead tuples.
_WRITE = text(
    """
    WITH incoming AS (
        SELECT * FROM unnest(CAST(:ts AS timestamp[]), CAST(:ids AS integer[]),
                             CAST(:vals AS double precision[])) AS n("timestamp", signal_id, value)
    ), removed AS (
        DELETE FROM data d
         WHERE d."timestamp" >= :start AND d."timestamp" < :end
           AND d.signal_id = ANY(CAST(:signals AS integer[]))
           AND NOT EXISTS (SELECT 1 FROM incoming n
                            WHERE n."timestamp" = d."timestamp" AND n.signal_id = d.signal_id)
    )
    INSERT INTO data ("timestamp", signal_id, value)
    SELECT "timestamp", signal_id, value FROM incoming ORDER BY "timestamp", signal_id
    ON CONFLICT ("timestamp", signal_id) DO UPDATE SET value = EXCLUDED.value
     WHERE data.value IS DISTINCT FROM EXCLUDED.value
    """
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


def forget_signal_ids() -> None:
    """Drop the cache (a test that empties the ``signal`` table needs this)."""
    _signal_ids.clear()


def slice_lock_key(hour: datetime) -> int:
    """The second advisory-lock key of the slice starting at ``hour``."""
    return int((hour - datetime(1970, 1, 1)) // HOUR)


def write_slice(
    conn: Connection, hour: datetime, rows: Sequence[StatRow], *, ids: dict[str, int]
) -> int:
    """Make the target's rows of ``[hour, hour + 1 h)`` for the signals in ``ids``
    exactly ``rows``; the number of rows the hour now holds.

    Call it inside a transaction: the lock is held until that transaction ends.
    """
    end = hour + HOUR
    outside = [r for r in rows if not hour <= r.timestamp < end]
    if outside:
        raise ValueError(f"{len(outside)} row(s) outside the slice {hour.isoformat()}")
    conn.execute(
        text("SELECT pg_advisory_xact_lock(:space, :key)"),
        {"space": SLICE_LOCK_SPACE, "key": slice_lock_key(hour)},
    )
    ordered = sorted((r.timestamp, ids[r.signal], r.value) for r in rows)
    conn.execute(
        _WRITE,
        {
            "ts": [r[0] for r in ordered],
            "ids": [r[1] for r in ordered],
            "vals": [r[2] for r in ordered],
            "start": hour,
            "end": end,
            "signals": sorted(ids.values()),
        },
    )
    return len(ordered)
