"""Benchmark the whole pipeline on this machine; ``make bench`` runs it.

1. Seeds a benchmark source of its own (``--days``, from 2025-12-01) with the
   project's generator, and an empty target.
2. Starts the real stack: the API (uvicorn), ``--workers`` Celery worker
   processes, on the running PostgreSQL and Redis.
3. Posts one backfill job and measures, from ``POST /jobs`` to the job's end:
   wall time, slices/s, source rows/s, per-slice latency p50/p95/p99.
   Each worker count first runs a one-day job that is not measured: the
   figures are those of running workers, not of their first connections.
4. Measures ``GET /data`` for one hour and one day: sequential p50/p99 and
   requests/s with concurrent clients.
5. Runs the same days through ``python -m workers.etl`` in one process.
6. Checks the target against PostgreSQL's own aggregation, prints a table and
   writes the figures as JSON, with an SVG chart of throughput against worker
   processes; drops its databases and queue.

    python -m bench.run --days 365 --workers 1,2,4     # make bench DAYS=365 WORKERS=1,2,4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from datetime import date, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from windfarm.models import OPEN_STATES, sql_list

FIRST_DAY = date(2025, 12, 1)
PG_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


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
        run = uuid.uuid4().hex[:8]
        self.source_url = f"{PG_URL}/wf_bench_{run}_source"
        self.target_url = f"{PG_URL}/wf_bench_{run}_target"
        self.queue = f"etl-bench-{run}"
        self.days = days
        self.procs: list = []
        self.env = {
            **os.environ,
            "SOURCE_DATABASE_URL": self.source_url,
            "TARGET_DATABASE_URL": self.target_url,
            "CELERY_BROKER_URL": REDIS_URL,
            "ETL_QUEUE": self.queue,
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("API_TOKEN", None)
        os.environ.update({k: self.env[k] for k in
                           ("SOURCE_DATABASE_URL", "TARGET_DATABASE_URL",
                            "CELERY_BROKER_URL", "ETL_QUEUE")})

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
        from tests.procs import run_api

        env = dict(self.env)
        if api_workers > 1:
            env["WEB_CONCURRENCY"] = str(api_workers)
        api = run_api(env, timeout=60)
        self.procs.append(api)
        self.env["API_BASE_URL"] = api.url
        return api

    def start_workers(self, concurrency: int):
        from tests.procs import run_worker

        worker = run_worker(self.env, concurrency=concurrency, timeout=60)
        self.procs.append(worker)
        return worker

    def stop_workers(self) -> None:
        for proc in [p for p in self.procs if p.name.startswith("worker")]:
            proc.stop()
            self.procs.remove(proc)

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
            figures = {"slice_rows": rows, "fill_s": time.perf_counter() - began,
                       "reads": bookkeeping.measure(api_url, engine),
                       "reconcile_pass_ms": bookkeeping.reconcile_pass(engine)}
        finally:
            engine.dispose()
        self.reset_target()
        return figures

    def close(self) -> None:
        from tests.procs import purge_queue
        from windfarm.db import dispose_engines, drop_database

        for proc in reversed(self.procs):
            proc.stop()
        purge_queue(REDIS_URL, self.queue)
        dispose_engines()
        drop_database(self.source_url)
        drop_database(self.target_url)


def run_backfill(stack: Stack, api_url: str, *, days: int | None = None) -> dict:
    """POST one job for the first ``days`` (default: every day) and wait for its end;
    the figures."""
    last = FIRST_DAY + timedelta(days=days - 1) if days else stack.last_day
    body = {"start_date": FIRST_DAY.isoformat(), "end_date": last.isoformat()}
    engine = create_engine(stack.target_url, poolclass=NullPool)
    with httpx.Client(base_url=api_url, timeout=120) as client:
        began = time.perf_counter()
        job = client.post("/jobs", json=body).json()
        job_id = job["id"]
        # Poll the database (cheaper than the API, and off the workers' path).
        with engine.connect() as conn:
            while True:
                open_slices = conn.execute(
                    text(f"SELECT count(*) FROM etl_slice WHERE job_id = :j "
                         f"AND state IN {sql_list(OPEN_STATES)}"), {"j": job_id}).scalar()
                conn.commit()
                if open_slices == 0:
                    break
                time.sleep(0.02)
        wall = time.perf_counter() - began
        final = client.get(f"/jobs/{job_id}").json()
    with engine.connect() as conn:
        latencies = [r[0] for r in conn.execute(text(
            "SELECT (extract(epoch FROM finished_at - started_at) * 1000)::float8 FROM etl_slice "
            "WHERE job_id = :j"), {"j": job_id})]
    engine.dispose()
    source_rows = _scalar(
        stack.source_url,
        "SELECT count(*) FROM data WHERE \"timestamp\" >= :first AND \"timestamp\" < :end",
        first=FIRST_DAY, end=last + timedelta(days=1))[0]
    slices = final["slices_total"]
    return {
        "job_status": final["status"],
        "slices": slices,
        "wall_s": wall,
        "slices_per_s": slices / wall,
        "source_rows_per_s": source_rows / wall,
        "slice_ms_p50": percentile(latencies, 50),
        "slice_ms_p95": percentile(latencies, 95),
        "slice_ms_p99": percentile(latencies, 99),
        "rows_written": final["rows_written"],
    }


def oracle_rows(stack: Stack) -> int:
    """How many target rows PostgreSQL's own aggregation says the benchmark's days
    must give (the source may hold more: the generator's default days are always
    there): per window and variable, mean/min/max when it has a value, std when
    it has two."""
    per_variable = " + ".join(
        f"(count({v}) > 0)::int * 3 + (count({v}) > 1)::int" for v in ("wind_speed", "power"))
    return _scalar(
        stack.source_url,
        f"SELECT coalesce(sum(n), 0) FROM (SELECT {per_variable} AS n FROM data "
        "WHERE \"timestamp\" >= :first AND \"timestamp\" < :end "
        "GROUP BY date_bin('10 minutes', \"timestamp\", '2000-01-01')) w",
        first=FIRST_DAY, end=stack.last_day + timedelta(days=1),
    )[0]


def bench_data(api_url: str, *, requests: int, clients: int, seconds: float) -> dict:
    """``GET /data`` for one hour and one day: sequential latency, then throughput."""
    shapes = {
        "hour": {"start": "2025-12-05T03:00:00", "end": "2025-12-05T03:59:59.999999",
                 "variables": ["wind_speed", "power"]},
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
    began = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "workers.etl", "--start", FIRST_DAY.isoformat(),
         "--end", stack.last_day.isoformat()],
        env=stack.env, capture_output=True, text=True, timeout=3600,
    )
    wall = time.perf_counter() - began
    if result.returncode != 0:
        raise RuntimeError(f"workers.etl failed: {result.stderr[-2000:]}")
    return {"wall_s": wall, "slices_per_s": 24 * stack.days / wall}


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
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "postgresql": pg, "platform": platform.platform()}


def print_table(figures: dict) -> None:
    print()
    print(f"windfarm-etl benchmark: {figures['days']} days, {figures['slices']} slices, "
          f"{figures['machine']['cores']} cores ({figures['machine']['cpu']})")
    print(f"{'run':<28}{'wall s':>9}{'slices/s':>10}{'rows/s':>11}"
          f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'warm-up s':>11}")
    for run in figures["backfills"]:
        print(f"{'celery, ' + str(run['workers']) + ' worker proc(s)':<28}{run['wall_s']:>9.2f}"
              f"{run['slices_per_s']:>10.0f}{run['source_rows_per_s']:>11.0f}"
              f"{run['slice_ms_p50']:>9.1f}{run['slice_ms_p95']:>9.1f}{run['slice_ms_p99']:>9.1f}"
              f"{run['warmup_s']:>11.2f}")
    if cli := figures.get("cli"):
        print(f"{'workers.etl, one process':<28}{cli['wall_s']:>9.2f}{cli['slices_per_s']:>10.0f}")
    print()
    print(f"{'GET /data':<12}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}  (concurrent clients)")
    for label, row in figures["data_api"].items():
        print(f"{label:<12}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
              f"{row['requests_per_s']:>9.0f}  ({row['concurrent_clients']}, "
              f"{row['errors']} errors)")
    if book := figures.get("bookkeeping"):
        print()
        print(f"{'bookkeeping, ' + format(book['slice_rows'], ',') + ' slice rows':<40}"
              f"{'p50 ms':>9}{'p99 ms':>9}")
        for label, row in book["reads"].items():
            print(f"{label:<40}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}")
        print(f"{'a reconciler pass (nothing to send)':<40}{book['reconcile_pass_ms']:>9.2f}")
    print()


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
        f'{figures["days"]} days, {figures["machine"]["cores"]} cores</text>',
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
            f'{cli:.0f} slices/s</text>',
        ]
    parts += [f'<text x="{left + 30}" y="{height - 6}">worker processes</text>', "</svg>"]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=int(os.environ.get("DAYS", "10")))
    parser.add_argument("--workers", default=os.environ.get("WORKERS", "2"),
                        help="worker processes; a comma list (1,2,4) measures each")
    parser.add_argument("--api-workers", type=int, default=int(os.environ.get("API_WORKERS", "1")))
    parser.add_argument("--clients", type=int, default=4, help="concurrent GET /data clients")
    parser.add_argument("--no-cli", action="store_true", help="skip the one-process comparison")
    parser.add_argument("--no-bookkeeping", action="store_true",
                        help="skip the reads over a million slice rows")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    counts = [int(n) for n in str(args.workers).split(",")]
    stack = Stack(args.days)
    figures: dict = {"days": args.days, "slices": 24 * args.days, "machine": machine(),
                     "when": datetime.now().isoformat(timespec="seconds"), "backfills": []}
    try:
        figures["seed_s"] = stack.seed()
        api = stack.start_api(args.api_workers)
        expected = oracle_rows(stack)
        for count in counts:
            stack.start_workers(count)
            warmup = run_backfill(stack, api.url, days=1)
            stack.reset_target()
            run = run_backfill(stack, api.url)
            run["warmup_s"] = warmup["wall_s"]
            run["workers"] = count
            run["rows_expected"] = expected
            if run["job_status"] != "succeeded" or run["rows_written"] != expected:
                raise RuntimeError(f"backfill wrong: {run}")
            figures["backfills"].append(run)
            print(f"  {count} worker(s): {run['wall_s']:.2f} s, {run['slices_per_s']:.0f} slices/s",
                  flush=True)
            stack.stop_workers()
        figures["data_api"] = bench_data(api.url, requests=300, clients=args.clients, seconds=3)
        if not args.no_bookkeeping:
            figures["bookkeeping"] = stack.bookkeeping(api.url)
        if not args.no_cli:
            figures["cli"] = run_cli(stack)
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
