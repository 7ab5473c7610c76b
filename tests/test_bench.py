"""``make bench`` (bench.run) stops everything it started when it is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.support.databases import PG_URL
from tests.support.procs import REPO, process_env
from tests.support.waiting import poll, until

pytestmark = pytest.mark.slow


def _tagged(tag: str) -> list[int]:
    """Processes whose environment carries ``tag``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"WF_BENCH_TEST_TAG={tag}".encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _all_databases() -> set[str]:
    engine = create_engine(f"{PG_URL}/postgres", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return set(conn.scalars(text("SELECT datname FROM pg_database")))
    finally:
        engine.dispose()


def _bench_databases(pid: int) -> set[str]:
    """The databases of the benchmark process ``pid`` (named after it)."""
    engine = create_engine(f"{PG_URL}/postgres", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return set(
                conn.scalars(
                    text("SELECT datname FROM pg_database WHERE datname LIKE :prefix"),
                    {"prefix": f"wf\\_bench\\_{pid}\\_%"},
                )
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_benchmark_leaves_no_process_or_database_behind(tmp_path, sig):
    tag = uuid.uuid4().hex
    bench = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--days",
            "2",
            "--workers",
            "1",
            "--no-cli",
            "--no-bookkeeping",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        env=process_env(WF_BENCH_TEST_TAG=tag),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Its API, a worker node and the node's pool child: the stack is up.
        started = until(
            lambda: _tagged(tag),
            lambda found: len(found) >= 4 and _bench_databases(bench.pid),
            timeout=120,
            alive=lambda: bench.poll() is None,
            what=lambda: f"the benchmark's stack up:\n{bench.stdout.read()}",
        )
        bench.send_signal(sig)
        output, _ = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 130, output
    assert "interrupted; stopping what it started" in output
    poll(lambda: _tagged(tag), lambda found: not found, timeout=10)
    assert _tagged(tag) == [], f"left running: {_tagged(tag)} of {started}"
    assert _bench_databases(bench.pid) == set()


def test_the_writers_benchmark_writes_every_slice_and_drops_its_database():
    from bench import writers

    figures = writers.run(2, 1, foreign_key=False)
    assert figures["slices"] == 48  # two processes, a day each
    assert figures["rows"] == 48 * 48  # 6 windows x 2 variables x 4 statistics an hour
    assert figures["postgres_cpu_ms_per_slice"] > 0
    assert not any(
        name.endswith("_writers") and f"_{os.getpid()}_" in name for name in _all_databases()
    )
