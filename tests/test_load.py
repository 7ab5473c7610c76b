"""Load: ``GET /data`` under concurrent clients while a 30-day backfill runs
through the same API, on real processes.

The test asserts correctness only (every answer 200 with every row, the
backfill progressing meanwhile and ending equal to the oracle); it prints
throughput and latency percentiles, which the README's Operations section
quotes. Traffic goes to the loopback only and stops after ``LOAD_S`` seconds.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import defaultdict
from datetime import date, datetime, timedelta

import httpx
import pytest

from api.seed_source import seed
from tests.support.databases import Databases
from tests.support.jobs import get_job, post_job
from tests.support.oracle import assert_target_matches_oracle
from tests.support.waiting import wait_for_job

pytestmark = pytest.mark.slow

FIRST, LAST = date(2025, 12, 1), date(2025, 12, 30)  # the fixture seeds Dec 1-10
CLIENTS = 8
LOAD_S = 10.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_clients(api_url: str, stop_at: float, seed_: int) -> tuple[dict, list[str]]:
    """One client: alternate an hour and a day of random dates until ``stop_at``;
    latencies by kind, and every error seen."""
    rng = random.Random(seed_)
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    with httpx.Client(base_url=api_url, timeout=30) as client:
        while time.monotonic() < stop_at:
            for kind, hours, rows in (("hour", 1, 60), ("day", 24, 1440)):
                start = datetime.combine(FIRST, datetime.min.time()) + timedelta(
                    hours=rng.randrange(0, ((LAST - FIRST).days + 1) * 24 - hours + 1)
                )
                end = start + timedelta(hours=hours) - timedelta(minutes=1)
                began = time.perf_counter()
                try:
                    response = client.get(
                        "/data", params={"start": start.isoformat(), "end": end.isoformat()}
                    )
                except httpx.HTTPError as exc:
                    errors.append(f"{kind} {start}: {type(exc).__name__}: {exc}")
                    continue
                latencies[kind].append(time.perf_counter() - began)
                got = response.content.count(b'"timestamp"')
                if response.status_code != 200 or got != rows:
                    errors.append(f"{kind} {start}: HTTP {response.status_code}, {got} rows")
    return latencies, errors


def test_get_data_under_concurrent_clients_during_a_30_day_backfill(
    fresh_dbs: Databases, api_server, worker_factory
):
    seed(fresh_dbs.source_url, start=FIRST + timedelta(days=10), end=LAST)
    worker_factory(api_server.url)
    job_id = post_job(
        api_server.url, {"start_date": FIRST.isoformat(), "end_date": LAST.isoformat()}
    )["id"]

    before = get_job(api_server.url, job_id)
    stop_at = time.monotonic() + LOAD_S
    results: list[tuple[dict, list[str]]] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        outcome = run_clients(api_server.url, stop_at, n)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(LOAD_S + 60)
    elapsed = time.monotonic() - began
    after = get_job(api_server.url, job_id)

    errors = [e for _, errs in results for e in errs]
    assert len(results) == CLIENTS and not errors, errors[:10]
    # The backfill ran during the load, and the load did not starve it.
    assert (
        before["slices_succeeded"] < 720 and after["slices_succeeded"] > before["slices_succeeded"]
    )

    merged: dict[str, list[float]] = defaultdict(list)
    for latencies, _ in results:
        for kind, values in latencies.items():
            merged[kind].extend(values)
    total = sum(len(v) for v in merged.values())
    print(
        f"\nGET /data, {CLIENTS} clients for {elapsed:.1f} s during a 30-day backfill "
        f"({after['slices_succeeded'] - before['slices_succeeded']} slices done meanwhile): "
        f"{total} requests, {total / elapsed:.0f} req/s, 0 errors"
    )
    for kind in ("hour", "day"):
        values = merged[kind]
        assert values, kind
        print(
            f"  {kind:>4}: {len(values)} requests, {len(values) / elapsed:.0f} req/s, "
            f"p50 {statistics.median(values) * 1000:.1f} ms, "
            f"p99 {percentile(values, 0.99) * 1000:.1f} ms"
        )

    view = wait_for_job(job_id, timeout=180)
    assert (view.status, view.slices_succeeded) == ("succeeded", 720)
    rows = assert_target_matches_oracle(
        fresh_dbs.source_url,
        fresh_dbs.target_url,
        datetime.combine(FIRST, datetime.min.time()),
        datetime.combine(LAST + timedelta(days=1), datetime.min.time()),
    )
    assert view.rows_written == rows
