"""The independent oracle: what PostgreSQL itself says the target must hold.

The expected rows come from the source with ``date_bin``, ``avg``, ``min``,
``max`` and ``stddev_samp``, with no project code involved; the actual rows are
read from the target. Compare them for any hour-aligned range:

    assert_target_matches_oracle(dbs.source_url, dbs.target_url, start, end)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

Rows = dict[tuple[datetime, str], float]

DEFAULT_VARIABLES = ("wind_speed", "power")
REL_TOL = 1e-9
# Only for values that should be 0 (the std of equal values), where a relative
# tolerance means nothing; far below any real statistic of the source.
ABS_TOL = 1e-12

_STATS = {"mean": "avg", "min": "min", "max": "max", "std": "stddev_samp"}


def _query(url: str, sql: str, params: dict) -> list:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).all()
    finally:
        engine.dispose()


def _finite(column: str) -> str:
    # PostgreSQL's NaN equals itself, so NOT IN leaves out all three.
    return f"CASE WHEN {column} NOT IN ('NaN', 'Infinity', '-Infinity') THEN {column} END"


def expected_rows(
    source_url: str, start: datetime, end: datetime, variables: Sequence[str] = DEFAULT_VARIABLES
) -> Rows:
    """The statistics rows of ``[start, end)`` computed by PostgreSQL from the source.

    Non-finite readings count as missing, as NULL does (the spec's rule): they
    are left out before aggregating.
    """
    columns = ", ".join(
        f'{fn}({_finite(var)}) AS "{var}_{stat}_10m"'
        for var in variables
        for stat, fn in _STATS.items()
    )
    rows = _query(
        source_url,
        f"""SELECT date_bin('10 minutes', "timestamp", '2000-01-01') AS t, {columns}
              FROM data WHERE "timestamp" >= :start AND "timestamp" < :end GROUP BY 1""",
        {"start": start, "end": end},
    )
    expected: Rows = {}
    for row in rows:
        stats = dict(row._mapping)
        window = stats.pop("t")
        for name, value in stats.items():
            if value is not None:
                expected[(window, name)] = float(value)
    return expected


def actual_rows(
    target_url: str, start: datetime, end: datetime, variables: Sequence[str] = DEFAULT_VARIABLES
) -> Rows:
    """The target's rows of ``[start, end)`` for the signals of ``variables``."""
    names = [f"{var}_{stat}_10m" for var in variables for stat in _STATS]
    rows = _query(
        target_url,
        """SELECT d."timestamp", s.name, d.value FROM data d JOIN signal s ON s.id = d.signal_id
            WHERE d."timestamp" >= :start AND d."timestamp" < :end AND s.name = ANY(:names)""",
        {"start": start, "end": end, "names": names},
    )
    return {(ts, name): value for ts, name, value in rows}


def differences(expected: Rows, actual: Rows) -> list[str]:
    """Human-readable differences between two row sets; empty when they match."""
    found = [f"missing {k[0]} {k[1]} = {expected[k]!r}" for k in sorted(expected.keys() - actual)]
    found += [f"unexpected {k[0]} {k[1]} = {actual[k]!r}" for k in sorted(actual.keys() - expected)]
    found += [
        f"wrong {k[0]} {k[1]}: {actual[k]!r}, expected {expected[k]!r}"
        for k in sorted(expected.keys() & actual.keys())
        if not math.isclose(actual[k], expected[k], rel_tol=REL_TOL, abs_tol=ABS_TOL)
    ]
    return found


def assert_target_matches_oracle(
    source_url: str,
    target_url: str,
    start: datetime,
    end: datetime,
    variables: Sequence[str] = DEFAULT_VARIABLES,
) -> int:
    """Fail unless the target's rows of ``[start, end)`` equal the oracle's, row for
    row; the number of rows compared."""
    expected = expected_rows(source_url, start, end, variables)
    actual = actual_rows(target_url, start, end, variables)
    found = differences(expected, actual)
    assert not found, (
        f"target differs from the oracle in [{start}, {end}) in {len(found)} row(s):\n  "
        + "\n  ".join(found[:20])
    )
    return len(expected)
