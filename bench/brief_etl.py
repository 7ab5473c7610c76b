"""The ETL of the original brief, rebuilt as the benchmark's yardstick.

The brief's script runs in one process, a day at a time: one ``GET /data``
request for the whole day, the day's 10-minute statistics by pandas
(``resample("10min")``), and the rows written with SQLAlchemy to tables it
creates itself (``create_all``; here the spec's ``signal`` and ``data`` as
:mod:`windfarm.models` declares them). This module is that design written
here, the plain way: no queue, no bookkeeping, no retries. Each day's rows
replace that day's earlier ones in one transaction, so a second run changes
nothing.

``make bench`` runs it on the benchmark's days, into a database of its own,
and compares its wall time with the queue's in the same run; it also checks
that it wrote the same statistics as the pipeline.

    python -m bench.brief_etl --start 2025-12-01 --end 2025-12-10
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date, datetime, time, timedelta

import httpx
import pandas as pd
from sqlalchemy import create_engine, delete, insert, select
from sqlalchemy.orm import Session

# The target's two tables of the spec, as the pipeline declares them.
from windfarm.models import Base, Data, Signal

VARIABLES = ("wind_speed", "power")
STATS = ("mean", "min", "max", "std")


def signal_ids(session: Session) -> dict[tuple[str, str], int]:
    """Each (variable, statistic)'s signal id, its row made when missing."""
    names = {f"{variable}_{stat}_10m": (variable, stat) for variable in VARIABLES for stat in STATS}
    known = {name: id_ for name, id_ in session.execute(select(Signal.name, Signal.id))}
    missing = [Signal(name=name) for name in names if name not in known]
    if missing:
        session.add_all(missing)
        session.flush()
        known.update((signal.name, signal.id) for signal in missing)
    return {key: known[name] for name, key in names.items()}


def extract(client: httpx.Client, day: date) -> pd.DataFrame:
    """The day's source rows, indexed by timestamp."""
    response = client.get(
        "/data",
        params={
            "start": datetime.combine(day, time.min).isoformat(),
            "end": datetime.combine(day, time(23, 59)).isoformat(),
            "variables": list(VARIABLES),
        },
    )
    response.raise_for_status()
    frame = pd.DataFrame(response.json(), columns=["timestamp", *VARIABLES])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    return frame.set_index("timestamp").astype(float)


def transform(frame: pd.DataFrame) -> pd.Series:
    """The statistics of each 10-minute window, one value per (timestamp,
    variable, statistic); windows without values have none."""
    stats = frame.resample("10min").agg(list(STATS))
    return stats.stack([0, 1], future_stack=True).dropna()


def load(session: Session, ids: dict[tuple[str, str], int], day: date, values: pd.Series) -> int:
    """Replace the day's rows with ``values``; rows written."""
    start = datetime.combine(day, time.min)
    session.execute(
        delete(Data).where(
            Data.timestamp >= start,
            Data.timestamp < start + timedelta(days=1),
            Data.signal_id.in_(ids.values()),
        )
    )
    rows = [
        {"timestamp": timestamp.to_pydatetime(), "signal_id": ids[variable, stat], "value": value}
        for (timestamp, variable, stat), value in values.items()
    ]
    if rows:
        session.execute(insert(Data), rows)
    return len(rows)


def run(client: httpx.Client, target_url: str, first: date, last: date) -> int:
    """Every day from ``first`` to ``last``, read through ``client`` (an httpx
    client on the API); rows written."""
    engine = create_engine(target_url)
    Base.metadata.create_all(engine, tables=[Signal.__table__, Data.__table__])
    written = 0
    try:
        day = first
        while day <= last:
            frame = extract(client, day)
            with Session(engine) as session, session.begin():
                written += load(session, signal_ids(session), day, transform(frame))
            day += timedelta(days=1)
    finally:
        engine.dispose()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.brief_etl", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--start", type=date.fromisoformat, required=True)
    parser.add_argument("--end", type=date.fromisoformat, required=True)
    args = parser.parse_args(argv)
    with httpx.Client(base_url=os.environ["API_BASE_URL"], timeout=60) as client:
        written = run(client, os.environ["BRIEF_DATABASE_URL"], args.start, args.end)
    print(f"{written} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
