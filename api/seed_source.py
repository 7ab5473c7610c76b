"""Create and fill the source database.

    python -m api.seed_source                      # default 10 days of December 2025
    python -m api.seed_source --start 2025-01-01 --end 2025-12-31

Applies ``api/sql/source.sql`` to ``SOURCE_DATABASE_URL``, creating the database
when it is missing. ``--start``/``--end`` (inclusive days) fill that range as
well. Rows that exist are never touched, so running it again changes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date, datetime
from datetime import time as dtime
from importlib import resources

from sqlalchemy import create_engine, text

from windfarm.config import get_settings
from windfarm.db import ensure_database


def source_sql() -> str:
    """The text of the SQL file that defines and fills the source table."""
    return resources.files("api").joinpath("sql/source.sql").read_text(encoding="utf-8")


def seed(url: str, *, start: date | None = None, end: date | None = None) -> int:
    """Apply the SQL file to ``url`` and fill ``[start, end]``; returns rows inserted."""
    ensure_database(url)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            # The file holds several statements and dollar-quoted bodies: send it
            # as one simple query through the DBAPI cursor.
            cursor = conn.connection.cursor()
            cursor.execute(source_sql())
            row = cursor.fetchone()
            inserted = row[0] if row else 0
            if start is not None and end is not None:
                inserted += conn.scalar(
                    text("SELECT windfarm_fill(:first, :last)"),
                    {
                        "first": datetime.combine(start, dtime.min),
                        "last": datetime.combine(end, dtime(23, 59)),
                    },
                )
        return inserted
    finally:
        engine.dispose()


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date like 2025-12-01") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m api.seed_source", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--start", type=_day, help="first day of an extra range to fill")
    parser.add_argument("--end", type=_day, help="last day (inclusive) of that range")
    args = parser.parse_args(argv)
    if (args.start is None) != (args.end is None):
        parser.error("--start and --end go together")
    if args.start and args.end < args.start:
        parser.error(f"--end {args.end} is before --start {args.start}")
    url = get_settings().source_database_url
    began = time.perf_counter()
    try:
        inserted = seed(url, start=args.start, end=args.end)
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it does not trace back
        print(
            f"seed_source: cannot seed the source database: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]}",
            file=sys.stderr,
        )
        return 1
    took = time.perf_counter() - began
    print(f"seed_source: {inserted} rows inserted in {took:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
