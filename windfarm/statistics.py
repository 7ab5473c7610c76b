"""Reads of the target's statistics: the signals and their 10-minute series."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

from sqlalchemy import Connection, TextClause, bindparam, text

_SIGNALS = text(
    "SELECT coalesce(json_agg(json_build_object('id', id, 'name', name) ORDER BY name), '[]')::text"
    " FROM signal"
)
_KNOWN = text("SELECT name FROM signal WHERE name IN :names").bindparams(
    bindparam("names", expanding=True)
)


def signals_json(conn: Connection) -> str:
    """Every signal the target holds, ``[{"id": ..., "name": ...}]`` by name."""
    return conn.scalar(_SIGNALS)


def known_signals(conn: Connection, names: list[str]) -> set[str]:
    """Those of ``names`` the target has a signal for."""
    return set(conn.scalars(_KNOWN, {"names": names})) if names else set()


@lru_cache(maxsize=256)
def _series_query(names: tuple[str, ...]) -> TextClause:
    # One row per window, one key per signal (null where that signal has no
    # value, e.g. the std of a one-value window), built by PostgreSQL as JSON.
    # The names become column labels: the caller checked them (letters,
    # digits and _ only).
    columns = ", ".join(
        f'max(d.value) FILTER (WHERE s.name = :s{i}) AS "{name}"' for i, name in enumerate(names)
    )
    wanted = ", ".join(f":s{i}" for i in range(len(names)))
    return text(
        f"""SELECT coalesce(json_agg(r ORDER BY r."timestamp"), '[]')::text
              FROM (SELECT d."timestamp", {columns}
                      FROM data d JOIN signal s ON s.id = d.signal_id
                     WHERE s.name IN ({wanted}) AND d."timestamp" BETWEEN :start AND :end
                     GROUP BY d."timestamp") r"""
    )


def series_json(conn: Connection, names: tuple[str, ...], start: datetime, end: datetime) -> str:
    """The values of the signals ``names`` in ``[start, end]``: a JSON array of
    rows, a timestamp and one key per signal, ordered by timestamp."""
    params = {"start": start, "end": end, **{f"s{i}": n for i, n in enumerate(names)}}
    return conn.scalar(_series_query(names), params)
