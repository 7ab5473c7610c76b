"""PostgreSQL's side of the slice writes, without the rest of the stack.

``python -m bench.writers --processes 8`` runs what a worker does to the
target for each slice (claim on the hour's lock, then the upsert of 48
statistics, the slice's end and its job's settle: ``workers/store.py``) from
several processes at once, on a scratch target database, with made-up
statistics. It prints PostgreSQL's CPU per slice and the slices per second;
``--without-foreign-key`` drops ``data.signal_id -> signal.id`` first, to
show what that constraint's checks cost as writers are added.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
import uuid
from datetime import date, datetime, timedelta

import numpy as np
from sqlalchemy import text

from bench import procs

PG_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")
VARIABLES = ("wind_speed", "power")
FIRST_DAY = date(2025, 1, 1)


def _write(url: str, job_id: int, hours: list[datetime], seed: int, go) -> None:
    from windfarm.db import engine_for
    from windfarm.vocabulary import signal_names
    from workers.stats import stat_rows
    from workers.store import hour_session, signal_ids

    engine = engine_for(url)
    ids = signal_ids(engine, signal_names(VARIABLES))
    rng = np.random.default_rng(seed)
    minutes = np.arange(60) * np.timedelta64(1, "m")
    go.wait()
    for hour in hours:
        stamps = np.datetime64(hour, "us") + minutes
        rows = stat_rows(stamps, {v: rng.random(60) * 100 for v in VARIABLES})
        with hour_session(engine, job_id, hour) as session:
            if session.claim() is None:
                raise RuntimeError(f"the slice {hour} could not be claimed")
            session.commit(rows, ids, values_ignored=0)


def run(processes: int, days: int, *, foreign_key: bool = True) -> dict:
    """Slices of ``days`` days for each of ``processes`` writers; the figures."""
    from windfarm import jobs
    from windfarm.db import dispose_engines, drop_database, engine_for
    from windfarm.models import prepare_target
    from windfarm.vocabulary import signal_names
    from workers.store import signal_ids

    url = f"{PG_URL}/wf_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}_writers"
    engine = engine_for(url)
    prepare_target(engine)
    try:
        signal_ids(engine, signal_names(VARIABLES))
        if not foreign_key:
            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE data DROP CONSTRAINT data_signal_id_fkey"))
        hours = jobs.job_slices(FIRST_DAY, FIRST_DAY + timedelta(days=days * processes - 1))
        with engine.begin() as conn:
            job_id = jobs.store_job(conn, origin="cli", hours=hours)
        dispose_engines()  # nothing shared with the writers
        go = multiprocessing.get_context("fork").Event()
        writers = [
            multiprocessing.get_context("fork").Process(
                target=_write, args=(url, job_id, hours[i::processes], i, go)
            )
            for i in range(processes)
        ]
        for writer in writers:
            writer.start()
        time.sleep(1)  # every writer has connected and waits
        cpu_before = procs.cpu_seconds(procs.named("postgres"))
        began = time.perf_counter()
        go.set()
        for writer in writers:
            writer.join()
        took = time.perf_counter() - began
        cpu = procs.cpu_seconds(procs.named("postgres")) - cpu_before
        if any(writer.exitcode for writer in writers):
            raise RuntimeError("a writer failed")
        with engine_for(url).connect() as conn:
            written = conn.scalar(text("SELECT count(*) FROM data"))
        return {
            "processes": processes,
            "foreign_key": foreign_key,
            "slices": len(hours),
            "rows": written,
            "postgres_cpu_ms_per_slice": 1000 * cpu / len(hours),
            "slices_per_s": len(hours) / took,
        }
    finally:
        dispose_engines()
        drop_database(url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.writers", description=__doc__)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--days", type=int, default=20, help="days of slices per process")
    parser.add_argument("--without-foreign-key", action="store_true")
    args = parser.parse_args(argv)
    figures = run(args.processes, args.days, foreign_key=not args.without_foreign_key)
    print(
        f"{figures['processes']} writer(s), foreign key "
        f"{'kept' if figures['foreign_key'] else 'dropped'}: {figures['slices']} slices, "
        f"{figures['rows']} rows; PostgreSQL {figures['postgres_cpu_ms_per_slice']:.2f} ms "
        f"of CPU a slice, {figures['slices_per_s']:.0f} slices/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
