"""Benchmark the whole pipeline on this machine; ``make bench`` runs it.

1. Seeds a benchmark source of its own (``--days``, from 2025-12-01) with the
   project's generator, and an empty target.
2. Measures how fast one process publishes the job's slice messages (the
   enqueue rate), then starts the real stack: the API (uvicorn) and
   ``--nodes`` Celery worker nodes of ``--workers`` pool processes each, on
   the running PostgreSQL and Redis.
3. Posts one backfill job and measures, from ``POST /jobs`` to the job's end:
   wall time, slices/s, source rows/s, per-slice latency p50/p95/p99 (claim
   to commit) and time in the queue, the CPU each component spent per slice
   (API, workers, Redis, PostgreSQL, read from /proc) and the Redis commands
   per slice. Each run first runs a one-day job that is not measured: the
   figures are those of running workers, not of their first connections.
4. Runs the same days through the original brief's ETL (``bench/brief_etl.py``:
   pandas, a day per request, one process) into a database of its own, and
   checks that its statistics are the pipeline's.
5. Measures ``GET /data`` for one hour and one day: sequential p50/p99 and
   requests/s with concurrent clients.
6. Measures the bookkeeping reads over about a million slice rows
   (``bench/bookkeeping.py``).
7. Runs the same days through ``python -m workers.etl`` in one process.
8. Checks the target against PostgreSQL's own aggregation, prints tables and
   writes the figures as JSON, with an SVG chart of throughput against worker
   processes; drops its databases and queues, also when stopped by Ctrl-C or
   SIGTERM.

    python -m bench.run --days 365 --workers 1,2,4     # make bench DAYS=365 WORKERS=1,2,4
    python -m bench.run --workers 1 --nodes 1,2         # make bench WORKERS=1 NODES=1,2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import date, datetime, timedelta
from pathlib import Path

import httpx
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from bench import procs, serial
from windfarm.models import ENDED_JOB

FIRST_DAY = date(2025, 12, 1)
PG_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
BROKERS = {"redis": REDIS_URL, "amqp": AMQP_URL}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _scalar(url: str, sql: str, **params):
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).one()
    finally:
        engine.dispose()


class Stack:
    """Databases, queue and processes of one benchmark run."""

    def __init__(self, days: int) -> None:
        # The process id names them too: whose they are, should any be left.
        run = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.source_url = f"{PG_URL}/wf_bench_{run}_source"
        self.target_url = f"{PG_URL}/wf_bench_{run}_target"
        self.brief_url = f"{PG_URL}/wf_bench_{run}_brief"
        self.queue = f"etl-bench-{run}"
        self.days = days
        self.procs: list = []
        self.log_dir = procs.scratch_dir()
        self.broker = "redis"
        self.brokers_used = {"redis"}
        self.env = {
            **os.environ,
            "SOURCE_DATABASE_URL": self.source_url,
            "TARGET_DATABASE_URL": self.target_url,
            "CELERY_BROKER_URL": REDIS_URL,
            "ETL_QUEUE": self.queue,
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("API_TOKEN", None)
        os.environ.update(
            {
                k: self.env[k]
                for k in (
                    "SOURCE_DATABASE_URL",
                    "TARGET_DATABASE_URL",
                    "CELERY_BROKER_URL",
                    "ETL_QUEUE",
                )
            }
        )

    @property
    def last_day(self) -> date:
        return FIRST_DAY + timedelta(days=self.days - 1)

    def seed(self) -> float:
        from api.seed_source import seed
        from windfarm.db import engine_for
        from windfarm.models import prepare_target

        began = time.perf_counter()
        seed(self.source_url, start=FIRST_DAY, end=self.last_day)
        prepare_target(engine_for(self.target_url))
        return time.perf_counter() - began

    def start_api(self, api_workers: int):
        env = dict(self.env)
        if api_workers > 1:
            env["WEB_CONCURRENCY"] = str(api_workers)
        api = procs.start_api(env, self.log_dir, into=self.procs)
        self.env["API_BASE_URL"] = api.url
        return api

    def start_workers(self, concurrency: int, nodes: int = 1) -> list:
        """``nodes`` separate worker nodes of ``concurrency`` pool processes each."""
        return [
            procs.start_worker(
                self.env,
                self.log_dir,
                name=f"worker{i + 1}",
                concurrency=concurrency,
                into=self.procs,
            )
            for i in range(nodes)
        ]

    def stop_workers(self) -> None:
        workers = [p for p in self.procs if p.name.startswith("worker")]
        procs.stop_all(workers)
        for proc in workers:
            self.procs.remove(proc)

    def use_broker(self, broker: str) -> None:
        """Point the processes started from now on (and this one) at ``broker``."""
        self.broker = broker
        self.env["CELERY_BROKER_URL"] = os.environ["CELERY_BROKER_URL"] = BROKERS[broker]
        from windfarm.config import get_settings

        get_settings.cache_clear()

    def cpu(self) -> dict[str, dict[int, float]]:
        """CPU seconds spent so far by each process of each component of the stack."""
        mine: dict[str, list[int]] = {"api": [], "consumer": [], "pool": []}
        for proc in self.procs:
            tree = procs.tree(proc.popen.pid)
            if proc.name == "api":
                mine["api"].extend(tree)
            else:  # a worker node's main process receives, dispatches and acks
                mine["consumer"].append(tree[0])  # every message; its pool runs them
                mine["pool"].extend(tree[1:])
        mine["broker"] = procs.named("redis-server" if self.broker == "redis" else "beam.smp")
        mine["postgresql"] = procs.named("postgres")
        return {part: procs.cpu_by_process(pids) for part, pids in mine.items()}

    def databases(self) -> list[str]:
        return [make_url(url).database or "" for url in (self.source_url, self.target_url)]

    def reset_target(self) -> None:
        with create_engine(self.target_url, poolclass=NullPool).begin() as conn:
            conn.execute(text("TRUNCATE data, etl_slice, etl_job"))

    def bookkeeping(self, api_url: str) -> dict:
        """Bookkeeping reads over about a million slice rows (bench/bookkeeping.py)."""
        from bench import bookkeeping

        self.reset_target()
        engine = create_engine(self.target_url, poolclass=NullPool)
        try:
            began = time.perf_counter()
            rows = bookkeeping.fill(engine)
            figures = {
                "slice_rows": rows,
                "fill_s": time.perf_counter() - began,
                "reads": bookkeeping.measure(api_url, engine),
                "reconcile_pass_ms": bookkeeping.reconcile_pass(engine),
            }
        finally:
            engine.dispose()
        self.reset_target()
        return figures

    def close(self) -> None:
        from windfarm.db import dispose_engines, drop_database

        procs.stop_all(list(reversed(self.procs)))
        for broker in self.brokers_used:
            purge(self.queue, broker)
        dispose_engines()
        drop_database(self.source_url)
        drop_database(self.target_url)
        drop_database(self.brief_url)


def purge(queue: str, broker: str = "redis") -> None:
    """Delete the benchmark's queues (both lanes) from the broker."""
    if broker == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        try:
            lanes = (queue, f"{queue}.priority")
            client.delete(*lanes, *(f"_kombu.binding.{lane}" for lane in lanes))
        finally:
            client.close()
        return
    from kombu import Connection

    with Connection(BROKERS[broker], connect_timeout=5) as conn:
        for name in (queue, f"{queue}.priority"):
            channel = conn.channel()
            try:
                channel.queue_delete(name)
            except Exception:  # noqa: BLE001 - a queue never declared is fine
                pass
            finally:
                channel.close()


def broker_calls(broker: str) -> int | None:
    """Commands the Redis server has run so far (None for another broker)."""
    if broker != "redis":
        return None
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return sum(stats["calls"] for stats in client.info("commandstats").values())
    finally:
        client.close()


def run_backfill(stack: Stack, api_url: str, *, days: int | None = None) -> dict:
    """POST one job for the first ``days`` (default: every day) and wait for its end;
    the figures."""
    last = FIRST_DAY + timedelta(days=days - 1) if days else stack.last_day
    body = {"start_date": FIRST_DAY.isoformat(), "end_date": last.isoformat(), "force": True}
    engine = create_engine(stack.target_url, poolclass=NullPool)
    nodes = [p for p in stack.procs if p.name.startswith("worker")]
    cpu_before, calls_before = stack.cpu(), broker_calls(stack.broker)
    cores_before = serial.core_times()
    phases_before = procs.phase_totals(nodes)
    waits = serial.WaitSampler(f"{PG_URL}/postgres", stack.databases()).start()
    with httpx.Client(base_url=api_url, timeout=120) as client:
        began = time.perf_counter()
        job = client.post("/jobs", json=body).json()
        job_id = job["id"]
        # Poll the job's row (cheaper than the API, and off the workers' path):
        # its status ends once its last slice has, right after that commit.
        with engine.connect() as conn:
            while True:
                status = conn.execute(
                    text("SELECT status FROM etl_job WHERE id = :j"), {"j": job_id}
                ).scalar()
                conn.commit()
                if status in ENDED_JOB:
                    break
                time.sleep(0.02)
        wall = time.perf_counter() - began
        cpu_after, calls_after = stack.cpu(), broker_calls(stack.broker)
        cores = serial.core_shares(cores_before, serial.core_times())
        postgres_waits = waits.stop()
        final = client.get(f"/jobs/{job_id}").json()
    phases_after = procs.phase_totals(nodes)
    with engine.connect() as conn:
        timings = conn.execute(
            text(
                "SELECT (extract(epoch FROM finished_at - started_at) * 1000)::float8, "
                "(extract(epoch FROM started_at - enqueued_at) * 1000)::float8 FROM etl_slice "
                "WHERE job_id = :j"
            ),
            {"j": job_id},
        ).all()
    engine.dispose()
    latencies = [t[0] for t in timings]
    queue_waits = [t[1] for t in timings]
    source_rows = _scalar(
        stack.source_url,
        'SELECT count(*) FROM data WHERE "timestamp" >= :first AND "timestamp" < :end',
        first=FIRST_DAY,
        end=last + timedelta(days=1),
    )[0]
    slices = final["slices_total"]
    spent = {
        part: {pid: after - cpu_before[part].get(pid, 0.0) for pid, after in seconds.items()}
        for part, seconds in cpu_after.items()
    }
    spent["postgresql"].pop(waits.backend_pid, None)
    return {
        "job_status": final["status"],
        "slices": slices,
        "wall_s": wall,
        "slices_per_s": slices / wall,
        "source_rows_per_s": source_rows / wall,
        "slice_ms_p50": percentile(latencies, 50),
        "slice_ms_p95": percentile(latencies, 95),
        "slice_ms_p99": percentile(latencies, 99),
        "queue_wait_ms_p50": percentile(queue_waits, 50),
        "queue_wait_ms_p95": percentile(queue_waits, 95),
        "rows_written": final["rows_written"],
        "broker": stack.broker,
        # Wall time of each phase of a slice in the task (its workers' metrics).
        "phase_ms": {
            phase: 1000
            * (seconds - phases_before.get(phase, [0, 0])[0])
            / max(1, count - phases_before.get(phase, [0, 0])[1])
            for phase, (seconds, count) in phases_after.items()
        },
        "redis_commands_per_slice": (calls_after - calls_before) / slices
        if calls_before is not None
        else None,
        "cpu_ms_per_slice": {
            part: sum(seconds.values()) * 1000 / slices for part, seconds in spent.items()
        },
        "busiest": serial.busiest(
            spent, wall_s=wall, slices_per_s=slices / wall, broker=stack.broker
        ),
        # What the machine's cores did meanwhile (/proc/stat).
        "core_shares": cores,
        # Backend time per slice: on CPU or waiting, whatever for.
        "postgres_ms_per_slice": postgres_waits["mean_active"] * wall * 1000 / slices,
        "postgres_waits": postgres_waits,
    }


def oracle_rows(stack: Stack) -> int:
    """How many target rows PostgreSQL's own aggregation says the benchmark's days
    must give (the source may hold more: the generator's default days are always
    there): per window and variable, mean/min/max when it has a value, std when
    it has two."""
    per_variable = " + ".join(
        f"(count({v}) > 0)::int * 3 + (count({v}) > 1)::int" for v in ("wind_speed", "power")
    )
    return _scalar(
        stack.source_url,
        f"SELECT coalesce(sum(n), 0) FROM (SELECT {per_variable} AS n FROM data "
        'WHERE "timestamp" >= :first AND "timestamp" < :end '
        "GROUP BY date_bin('10 minutes', \"timestamp\", '2000-01-01')) w",
        first=FIRST_DAY,
        end=stack.last_day + timedelta(days=1),
    )[0]


def bench_data(api_url: str, *, requests: int, clients: int, seconds: float) -> dict:
    """``GET /data`` for one hour and one day: sequential latency, then throughput."""
    shapes = {
        "hour": {
            "start": "2025-12-05T03:00:00",
            "end": "2025-12-05T03:59:59.999999",
            "variables": ["wind_speed", "power"],
        },
        "day": {"start": "2025-12-05T00:00:00"},
    }
    out: dict[str, dict] = {}
    for label, params in shapes.items():
        with httpx.Client(base_url=api_url, timeout=30) as client:
            client.get("/data", params=params).raise_for_status()
            times = []
            for _ in range(requests):
                t = time.perf_counter()
                client.get("/data", params=params).raise_for_status()
                times.append((time.perf_counter() - t) * 1000)
        done, errors = _hammer(api_url, params, clients=clients, seconds=seconds)
        out[label] = {
            "p50_ms": percentile(times, 50),
            "p99_ms": percentile(times, 99),
            "concurrent_clients": clients,
            "requests_per_s": done / seconds,
            "errors": errors,
        }
    return out


def _hammer(api_url: str, params: dict, *, clients: int, seconds: float) -> tuple[int, int]:
    counts = [0] * clients
    errors = [0] * clients
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        with httpx.Client(base_url=api_url, timeout=30) as client:
            while time.perf_counter() < stop:
                try:
                    client.get("/data", params=params).raise_for_status()
                    counts[i] += 1
                except httpx.HTTPError:
                    errors[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts), sum(errors)


def run_cli(stack: Stack) -> dict:
    """The same days through ``python -m workers.etl`` in one process."""
    stack.reset_target()
    return run_one_process(stack, "workers.etl", stack.env)


def run_brief(stack: Stack) -> dict:
    """The same days through the brief's ETL (bench/brief_etl.py) into a database
    of its own; its statistics must be the pipeline's (the target's now)."""
    from windfarm.db import ensure_database

    ensure_database(stack.brief_url)
    figures = run_one_process(
        stack, "bench.brief_etl", {**stack.env, "BRIEF_DATABASE_URL": stack.brief_url}
    )
    rows, differing = compare_statistics(stack.target_url, stack.brief_url)
    if differing:
        raise RuntimeError(
            f"the brief's ETL and the pipeline disagree on {differing} of {rows} statistics"
        )
    return {**figures, "rows": rows}


def run_one_process(stack: Stack, module: str, env: dict[str, str]) -> dict:
    """``python -m module`` over the benchmark's days: its wall time, start-up
    included, and the CPU it, the API and PostgreSQL spent per slice."""
    cpu_before, own_before = stack.cpu(), _children_cpu_s()
    began = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            module,
            "--start",
            FIRST_DAY.isoformat(),
            "--end",
            stack.last_day.isoformat(),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    wall = time.perf_counter() - began
    if result.returncode != 0:
        raise RuntimeError(f"{module} failed: {result.stderr[-2000:]}")
    cpu_after, own_after = stack.cpu(), _children_cpu_s()
    slices = 24 * stack.days

    def spent_ms(part: str) -> float:
        seconds = cpu_after[part]
        return 1000 * sum(s - cpu_before[part].get(pid, 0.0) for pid, s in seconds.items()) / slices

    return {
        "wall_s": wall,
        "slices_per_s": slices / wall,
        "cpu_ms_per_slice": {
            "api": spent_ms("api"),
            "process": 1000 * (own_after - own_before) / slices,
            "postgresql": spent_ms("postgresql"),
        },
    }


def _children_cpu_s() -> float:
    """CPU seconds of this process's children that have ended and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def compare_statistics(url: str, other_url: str) -> tuple[int, int]:
    """Rows of ``url``'s ``data`` and how many of them ``other_url`` lacks or holds
    with another value (beyond float rounding); rows only ``other_url`` has
    count too."""
    sql = text(
        'SELECT d."timestamp", s.name, d.value FROM data d JOIN signal s ON s.id = d.signal_id'
    )
    tables = []
    for each in (url, other_url):
        engine = create_engine(each, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                tables.append({(ts, name): value for ts, name, value in conn.execute(sql)})
        finally:
            engine.dispose()
    mine, theirs = tables
    differing = sum(
        1
        for key, value in mine.items()
        if key not in theirs or not math.isclose(value, theirs[key], rel_tol=1e-9, abs_tol=1e-9)
    )
    return len(mine), differing + len(theirs.keys() - mine.keys())


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pg = _scalar(f"{PG_URL}/postgres", "SHOW server_version")[0]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "postgresql": pg,
        "platform": platform.platform(),
    }


def run_label(run: dict) -> str:
    """A run's name in the tables: its broker and layout."""
    return f"{run['broker']}, {run['nodes']} node(s), {run['workers']} proc(s)"


def print_table(figures: dict) -> None:
    print()
    print(
        f"windfarm-etl benchmark: {figures['days']} days, {figures['slices']} slices, "
        f"{figures['machine']['cores']} cores ({figures['machine']['cpu']})"
    )
    if enqueue := figures.get("enqueue"):
        print(
            f"enqueue: {enqueue['messages']} messages in {enqueue['seconds']:.2f} s, "
            f"{enqueue['messages_per_s']:,.0f} messages/s"
        )
    print(
        f"{'run':<28}{'wall s':>9}{'slices/s':>10}{'rows/s':>11}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'wait p50':>10}{'warm-up s':>11}"
    )
    for run in figures["backfills"]:
        label = run_label(run)
        print(
            f"{label:<28}{run['wall_s']:>9.2f}"
            f"{run['slices_per_s']:>10.0f}{run['source_rows_per_s']:>11.0f}"
            f"{run['slice_ms_p50']:>9.1f}{run['slice_ms_p95']:>9.1f}{run['slice_ms_p99']:>9.1f}"
            f"{run['queue_wait_ms_p50']:>10.0f}{run['warmup_s']:>11.2f}"
        )
    if cli := figures.get("cli"):
        print(f"{'workers.etl, one process':<28}{cli['wall_s']:>9.2f}{cli['slices_per_s']:>10.0f}")
    if brief := figures.get("brief"):
        print(
            f"{'brief ETL, pandas, by day':<28}"
            f"{brief['wall_s']:>9.2f}{brief['slices_per_s']:>10.0f}"
        )
    print_speedups(figures)
    print()
    print(f"{'phase ms per slice (wall)':<28}{'fetch':>9}{'compute':>9}{'write':>9}")
    for run in figures["backfills"]:
        phase = run.get("phase_ms") or {}
        label = run_label(run)
        print(
            f"{label:<28}"
            + "".join(
                f"{phase.get(name, float('nan')):>9.2f}" for name in ("fetch", "compute", "write")
            )
        )
    print()
    print(
        f"{'CPU ms per slice':<28}{'api':>9}{'consumer':>9}{'pool':>9}{'broker':>9}"
        f"{'postgres':>9}{'total':>9}{'redis cmds':>12}"
    )
    for run in figures["backfills"]:
        cpu = run["cpu_ms_per_slice"]
        label = run_label(run)
        commands = run["redis_commands_per_slice"]
        print(
            f"{label:<28}{cpu['api']:>9.2f}{cpu['consumer']:>9.2f}{cpu['pool']:>9.2f}"
            f"{cpu['broker']:>9.2f}"
            f"{cpu['postgresql']:>9.2f}{sum(cpu.values()):>9.2f}"
            f"{'' if commands is None else format(commands, '.1f'):>12}"
        )
    one_process = (("cli", "workers.etl, one process"), ("brief", "brief ETL, pandas, by day"))
    for key, name in one_process:
        if one := figures.get(key):
            cpu = one["cpu_ms_per_slice"]
            print(
                f"{name:<28}{cpu['api']:>9.2f}{'-':>9}{cpu['process']:>9.2f}{'-':>9}"
                f"{cpu['postgresql']:>9.2f}{sum(cpu.values()):>9.2f}"
            )
    if any(figures.get(key) for key, _ in one_process):
        print("  (a one-process run's own CPU is under pool)")
    print_serial(figures["backfills"])
    print()
    print(f"{'GET /data':<12}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}  (concurrent clients)")
    for label, row in figures["data_api"].items():
        print(
            f"{label:<12}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
            f"{row['requests_per_s']:>9.0f}  ({row['concurrent_clients']}, "
            f"{row['errors']} errors)"
        )
    if book := figures.get("bookkeeping"):
        print()
        print(
            f"{'bookkeeping, ' + format(book['slice_rows'], ',') + ' slice rows':<40}"
            f"{'p50 ms':>9}{'p99 ms':>9}"
        )
        for label, row in book["reads"].items():
            print(f"{label:<40}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}")
        print(f"{'a reconciler pass (nothing to send)':<40}{book['reconcile_pass_ms']:>9.2f}")
    print()


CORE_KINDS = ("user", "system", "idle", "steal")


def print_speedups(figures: dict) -> None:
    """Each run's speed against the one-process runs of the same days."""
    yardsticks = [
        (name, figures[key]["wall_s"])
        for key, name in (("brief", "brief ETL"), ("cli", "workers.etl"))
        if figures.get(key)
    ]
    if not yardsticks:
        return
    print()
    print(f"{'times as fast as':<28}" + "".join(f"{name:>13}" for name, _ in yardsticks))
    for run in figures["backfills"]:
        print(
            f"{run_label(run):<28}"
            + "".join(f"{wall / run['wall_s']:>12.2f}x" for _, wall in yardsticks)
        )


def print_serial(runs: list[dict]) -> None:
    """The serial limits (bench/serial.py): the busiest single-threaded process of
    each component, what the machine's cores did, and what PostgreSQL's backends
    spent per slice and on what."""
    print()
    print(
        f"{'busiest process, % of a core':<28}"
        + "".join(f"{p:>16}" for p in serial.SINGLE_THREADED)
    )
    print(f"{'  (full at slices/s)':<28}")
    for run in runs:
        label = run_label(run)
        cells = []
        for part in serial.SINGLE_THREADED:
            found = run["busiest"].get(part)
            cells.append(
                f"{found['core_share']:>6.0%} ({found['full_at']:>6,.0f})" if found else "-"
            )
        print(f"{label:<28}" + "".join(f"{cell:>16}" for cell in cells))
    print()
    print(f"{'cores during the run':<28}" + "".join(f"{kind:>9}" for kind in CORE_KINDS))
    for run in runs:
        label = run_label(run)
        shares = run.get("core_shares") or {}
        print(
            f"{label:<28}"
            + "".join(
                f"{shares[kind]:>9.0%}" if kind in shares else f"{'-':>9}" for kind in CORE_KINDS
            )
        )
    print()
    print(f"{'PostgreSQL per slice':<28}{'ms':>7}{'active':>8}{'on CPU':>8}  most waited for")
    for run in runs:
        label = run_label(run)
        waits = run["postgres_waits"]
        shares = dict(waits["shares"])
        on_cpu = shares.pop(serial.ON_CPU, 0.0)
        top = ", ".join(f"{event} {share:.0%}" for event, share in list(shares.items())[:3])
        print(
            f"{label:<28}{run['postgres_ms_per_slice']:>7.2f}{waits['mean_active']:>8.2f}"
            f"{on_cpu:>8.0%}  {top or '-'}"
        )


def throughput_svg(figures: dict) -> str:
    """A bar chart of slices/s against worker processes, with the one-process
    run as a dashed line: plain SVG, no plotting library."""
    runs = figures["backfills"]
    cli = figures.get("cli", {}).get("slices_per_s")
    top = max([r["slices_per_s"] for r in runs] + [cli or 0]) * 1.15
    width, height, left, bottom, bar = max(480, 120 + 90 * len(runs)), 300, 40, 40, 50
    plot_h = height - bottom - 60

    def y(value: float) -> float:
        return height - bottom - value / top * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="{left}" y="18" font-weight="bold">slices/s by worker processes: '
        f"{figures['days']} days, {figures['machine']['cores']} cores</text>",
        f'<line x1="{left}" y1="{y(0)}" x2="{width - 20}" y2="{y(0)}" stroke="#333"/>',
    ]
    for i, run in enumerate(runs):
        x = left + 30 + i * 90
        rate = run["slices_per_s"]
        parts += [
            f'<rect x="{x}" y="{y(rate):.1f}" width="{bar}" height="{y(0) - y(rate):.1f}" '
            'fill="#3a7bd5"/>',
            f'<text x="{x + bar / 2}" y="{y(rate) - 4:.1f}" text-anchor="middle">{rate:.0f}</text>',
            f'<text x="{x + bar / 2}" y="{y(0) + 16}" text-anchor="middle">{run["workers"]}</text>',
        ]
    if cli:
        parts += [
            f'<line x1="{left}" y1="{y(cli):.1f}" x2="{width - 20}" y2="{y(cli):.1f}" '
            'stroke="#d55e00" stroke-dasharray="5,4"/>',
            f'<text x="{left}" y="38" fill="#d55e00">- - - workers.etl in one process: '
            f"{cli:.0f} slices/s</text>",
        ]
    parts += [f'<text x="{left + 30}" y="{height - 6}">worker processes</text>', "</svg>"]
    return "\n".join(parts) + "\n"


def measure_backfill(stack: Stack, api_url: str, *, nodes: int, count: int, expected: int) -> dict:
    """One backfill through ``nodes`` worker nodes of ``count`` processes, after
    an unmeasured one-day warm-up; checked against the oracle's row count."""
    stack.start_workers(count, nodes)
    warmup = run_backfill(stack, api_url, days=1)
    stack.reset_target()
    run = run_backfill(stack, api_url)
    run.update(
        warmup_s=warmup["wall_s"], workers=count * nodes, nodes=nodes, rows_expected=expected
    )
    if run["job_status"] != "succeeded" or run["rows_written"] != expected:
        raise RuntimeError(f"backfill wrong: {run}")
    print(
        f"  {stack.broker}, {nodes} node(s) x {count} process(es): {run['wall_s']:.2f} s, "
        f"{run['slices_per_s']:.0f} slices/s",
        flush=True,
    )
    stack.stop_workers()
    return run


def measure_enqueue(stack: Stack) -> dict:
    """Publish a job's worth of slice messages from this process to a scratch
    queue, as the API's background send does; messages per second."""
    from windfarm.dispatch import publish
    from windfarm.jobs import job_slices

    hours = job_slices(FIRST_DAY, stack.last_day)
    scratch = f"{stack.queue}-enqueue"
    os.environ["ETL_QUEUE"] = scratch
    from windfarm.config import get_settings

    get_settings.cache_clear()
    try:
        publish(0, hours[:10])  # warm: connection and producer
        began = time.perf_counter()
        sent = publish(0, hours)
        took = time.perf_counter() - began
    finally:
        purge(scratch)
        os.environ["ETL_QUEUE"] = stack.queue
        get_settings.cache_clear()
    return {"messages": sent, "seconds": took, "messages_per_s": sent / took}


def _stop_on_signals() -> None:
    """SIGINT (Ctrl-C) and SIGTERM stop the run: every process started is
    stopped and the databases dropped on the way out. Both handlers are set
    here, SIGINT's too: a process started in the background of a
    non-interactive shell inherits SIGINT ignored."""

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=int(os.environ.get("DAYS", "10")))
    parser.add_argument(
        "--workers",
        default=os.environ.get("WORKERS", "2"),
        help="pool processes per worker node; a comma list (1,2,4) measures each",
    )
    parser.add_argument(
        "--nodes",
        default=os.environ.get("NODES", "1"),
        help="separate worker nodes; a comma list (1,2) measures each",
    )
    parser.add_argument("--api-workers", type=int, default=int(os.environ.get("API_WORKERS", "1")))
    parser.add_argument(
        "--layouts",
        default=os.environ.get("LAYOUTS", ""),
        help="explicit NODESxPROCESSES runs, e.g. 1x16,4x4,16x1 (instead of nodes x workers)",
    )
    parser.add_argument(
        "--broker",
        default=os.environ.get("BROKER", "redis"),
        help="redis, amqp (RabbitMQ), or both side by side: redis,amqp",
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent GET /data clients")
    parser.add_argument(
        "--no-cli",
        action="store_true",
        default=bool(os.environ.get("BENCH_NO_CLI")),
        help="skip the one-process comparison (or BENCH_NO_CLI=1)",
    )
    parser.add_argument(
        "--no-brief",
        action="store_true",
        default=bool(os.environ.get("BENCH_NO_BRIEF")),
        help="skip the brief's ETL, pandas a day at a time (or BENCH_NO_BRIEF=1)",
    )
    parser.add_argument(
        "--no-bookkeeping",
        action="store_true",
        default=bool(os.environ.get("BENCH_NO_BOOKKEEPING")),
        help="skip the reads over a million slice rows (or BENCH_NO_BOOKKEEPING=1)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    counts = [int(n) for n in str(args.workers).split(",")]
    node_counts = [int(n) for n in str(args.nodes).split(",")]
    layouts = [(nodes, count) for nodes in node_counts for count in counts]
    if args.layouts:
        layouts = [tuple(int(n) for n in item.split("x")) for item in args.layouts.split(",")]
    _stop_on_signals()
    stack = Stack(args.days)
    figures: dict = {
        "days": args.days,
        "slices": 24 * args.days,
        "machine": machine(),
        "when": datetime.now().isoformat(timespec="seconds"),
        "backfills": [],
    }
    try:
        figures["seed_s"] = stack.seed()
        api = stack.start_api(args.api_workers)
        expected = oracle_rows(stack)
        figures["enqueue"] = measure_enqueue(stack)
        for broker in str(args.broker).split(","):
            if broker != stack.broker:
                stack.use_broker(broker)
                stack.brokers_used.add(broker)
                stack.procs.remove(api)
                api.stop()
                api = stack.start_api(args.api_workers)
            for nodes, count in layouts:
                figures["backfills"].append(
                    measure_backfill(stack, api.url, nodes=nodes, count=count, expected=expected)
                )
        if not args.no_brief:
            if importlib.util.find_spec("pandas") is None:
                # A machine with only the runtime dependencies (no `make install`).
                print("bench: the brief's ETL is left out: pandas is not installed", flush=True)
            else:
                figures["brief"] = run_brief(stack)
        figures["data_api"] = bench_data(api.url, requests=300, clients=args.clients, seconds=3)
        if not args.no_bookkeeping:
            figures["bookkeeping"] = stack.bookkeeping(api.url)
        if not args.no_cli:
            figures["cli"] = run_cli(stack)
    except KeyboardInterrupt:
        print("bench: interrupted; stopping what it started", flush=True)
        return 130
    finally:
        stack.close()
    print_table(figures)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{args.days}d-{datetime.now():%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(figures, indent=2))
    path.with_suffix(".svg").write_text(throughput_svg(figures))
    print(f"figures written to {path} (and a chart of throughput: {path.with_suffix('.svg').name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
