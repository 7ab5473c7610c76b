"""``make bench`` (bench.run) stops everything it started when it is stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.conftest import PG_URL
from tests.procs import REPO, process_env

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


def _bench_databases() -> set[str]:
    engine = create_engine(f"{PG_URL}/postgres", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return set(
                conn.scalars(
                    text("SELECT datname FROM pg_database WHERE datname LIKE 'wf_bench_%'")
                )
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_benchmark_leaves_no_process_or_database_behind(tmp_path, sig):
    tag = uuid.uuid4().hex
    before = _bench_databases()
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
        deadline = time.monotonic() + 120
        # Its API, a worker node and the node's pool child: the stack is up.
        while len(_tagged(tag)) < 4:
            assert bench.poll() is None and time.monotonic() < deadline, bench.stdout.read()
            time.sleep(0.2)
        started = _tagged(tag)
        bench.send_signal(sig)
        output, _ = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 130, output
    assert "interrupted; stopping what it started" in output
    deadline = time.monotonic() + 10
    while _tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _tagged(tag) == [], f"left running: {_tagged(tag)} of {started}"
    assert _bench_databases() <= before
