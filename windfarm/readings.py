"""Reads of the source database: the 1-minute readings a range holds."""

from __future__ import annotations

from datetime import date, datetime
from functools import lru_cache

from sqlalchemy import Connection, text

from windfarm.db import first_row
from windfarm.vocabulary import VARIABLES


@lru_cache
def _rows_query(variables: tuple[str, ...]) -> str:
    # PostgreSQL builds the JSON itself: one text value crosses the wire and
    # Python never touches a row. Aggregating whole rows is about a third
    # cheaper than json_build_object per row. Column names come from the
    # closed set VARIABLES, checked below. Driver-level SQL (psycopg2
    # parameters), run without a result object: see windfarm.db.first_row.
    columns = ", ".join(variables)
    return f"""SELECT coalesce(json_agg(d ORDER BY "timestamp"), '[]')::text
            FROM (SELECT "timestamp", {columns} FROM data
                  WHERE "timestamp" BETWEEN %(start)s AND %(end)s) d"""


def rows_json(conn: Connection, start: datetime, end: datetime, variables: set[str]) -> str:
    """The readings of ``[start, end]`` (inclusive) as a JSON array, ordered by
    timestamp; each row has the timestamp and the wanted variables, in the
    source's column order."""
    chosen = tuple(name for name in VARIABLES if name in variables)
    if not chosen or len(chosen) != len(variables):
        raise ValueError(f"variables must be some of {', '.join(VARIABLES)}")
    row = first_row(conn, _rows_query(chosen), {"start": start, "end": end})
    assert row is not None  # an aggregate always has its row
    return row[0]


# Both ends come from the primary-key index: two index lookups, no scan.
_DAYS = text('SELECT min("timestamp"), max("timestamp") FROM data')


def source_days(conn: Connection) -> tuple[date | None, date | None]:
    """The first and the last day the source holds readings of."""
    first, last = conn.execute(_DAYS).one()
    return (first.date() if first else None), (last.date() if last else None)
