"""A system of real processes for system tests: beat, Flower, a private Redis,
and :class:`System`, which starts and tracks a test's API, workers and beat.

Complements ``tests/procs.py`` (API and workers). A private Redis lets a test
stop and restart the broker without touching the shared one. The ``system``
fixture (``tests/conftest.py``) gives a test a :class:`System` on its own
databases and stops everything afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import httpx
import redis
from sqlalchemy import text

from tests.conftest import Databases
from tests.oracle import assert_target_matches_oracle
from tests.procs import START_TIMEOUT_S, Proc, free_port, process_env, run_api, run_worker, start
from windfarm.db import target_engine

# The reconciler every second, a slice lost after 5 s without a sign of work,
# retries at most 2 s apart: the production logic on a clock tests can wait for.
# No catch-up: beat would fill a week of empty hours at start, beside each
# test's own jobs (tests/test_pressure.py tests the catch-up itself).
FAST = {
    "ETL_RECONCILE_EVERY_S": "1",
    "ETL_SLICE_TIMEOUT_S": "5",
    "ETL_RETRY_BACKOFF_MAX_S": "2",
    "ETL_CATCHUP_DAYS": "0",
}


def run_beat(env: dict[str, str], *, name: str = "beat") -> Proc:
    """``celery -A scheduler beat`` with a schedule file of its own."""
    schedule = Path(tempfile.mkdtemp(prefix="wf-beat-")) / "schedule"
    proc = start(
        name,
        ["-m", "celery", "-A", "scheduler", "beat", "-l", "info", "--schedule", str(schedule)],
        env,
    )
    if not proc.wait_for_log("beat: Starting...", START_TIMEOUT_S):
        proc.stop()
        raise RuntimeError(f"beat did not start\n{proc.describe()}")
    return proc


def run_flower(env: dict[str, str], *, name: str = "flower") -> Proc:
    """``celery -A workers flower`` on a free port, once it answers."""
    port = free_port()
    proc = start(
        name,
        ["-m", "celery", "-A", "workers", "flower", f"--port={port}", "--address=127.0.0.1"],
        env,
    )
    proc.url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.alive():
        try:
            httpx.get(f"{proc.url}/healthcheck", timeout=2)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.stop()
    raise RuntimeError(f"Flower did not start\n{proc.describe()}")


class PrivateRedis:
    """A redis-server of the test's own on a free port; it keeps nothing on disk,
    so :meth:`restart` loses every message, as a real broker restart would.
    With ``password`` it requires AUTH, and :attr:`url` carries the password."""

    def __init__(self, *, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        self.dir = Path(tempfile.mkdtemp(prefix="wf-redis-"))
        self.popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.popen = subprocess.Popen(
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(
                    port=self.port, password=self.password, socket_connect_timeout=0.5
                ).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        self.popen = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


def day_start(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time())


@dataclass
class System:
    """The processes of one test, on its own databases; ``api`` is the one jobs are posted to."""

    dbs: Databases
    procs: list[Proc] = field(default_factory=list)
    cleanups: list[Callable[[], object]] = field(default_factory=list)
    api: Proc | None = None

    def start_api(self, **env: str) -> Proc:
        self.api = self.add(run_api(process_env(**env), name=f"api{len(self.procs) + 1}"))
        return self.api

    def start_worker(
        self, api_url: str, *, name: str = "worker", concurrency: int = 2, **env: str
    ) -> Proc:
        return self.add(
            run_worker(
                process_env(**{"API_BASE_URL": api_url, **FAST, **env}),
                name=name,
                concurrency=concurrency,
            )
        )

    def start_beat(self, **env: str) -> Proc:
        return self.add(run_beat(process_env(**{**FAST, **env})))

    def add(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def post(self, body: dict, *, api: Proc | None = None) -> dict:
        response = httpx.post(f"{(api or self.api).url}/jobs", json=body, timeout=30)
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: int) -> dict:
        response = httpx.get(f"{self.api.url}/jobs/{job_id}", timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, job_id: int, *, timeout: float = 90) -> dict:
        """The job as GET /jobs/{id} shows it once it has ended."""
        return self.until(job_id, lambda j: j["status"] in ("succeeded", "failed"), timeout)

    def wait_progress(self, job_id: int, succeeded: int, *, timeout: float = 60) -> dict:
        return self.until(job_id, lambda j: j["slices_succeeded"] >= succeeded, timeout)

    def until(self, job_id: int, done, timeout: float) -> dict:
        """The job once ``done(job)`` holds; fails with the processes' logs on timeout."""
        deadline = time.monotonic() + timeout
        while not done(job := self.job(job_id)):
            if time.monotonic() > deadline:
                logs = "\n".join(p.describe() for p in self.procs)
                raise AssertionError(f"job {job_id} not there in {timeout:g} s: {job}\n{logs}")
            time.sleep(0.2)
        return job

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
            print(proc.describe())
        for cleanup in reversed(self.cleanups):
            cleanup()


def slice_rows(job_id: int) -> dict[datetime, tuple[str, int]]:
    """slice start -> (state, attempts), from the database itself."""
    with target_engine().connect() as conn:
        rows = conn.execute(
            text("SELECT slice_start, state, attempts FROM etl_slice WHERE job_id = :j"),
            {"j": job_id},
        ).all()
    return {start: (state, attempts) for start, state, attempts in rows}


def target_rows(start: datetime, end: datetime) -> int:
    with target_engine().connect() as conn:
        return conn.scalar(
            text('SELECT count(*) FROM data WHERE "timestamp" >= :s AND "timestamp" < :e'),
            {"s": start, "e": end},
        )


def assert_succeeded_and_right(system: System, job_id: int, first: date, last: date) -> dict:
    """GET /jobs/{id} says succeeded with every count right, the database agrees,
    and the target holds exactly the oracle's rows for the job's days."""
    shown = system.job(job_id)
    total = 24 * ((last - first).days + 1)
    assert shown["status"] == "succeeded", shown
    assert (
        shown["slices_total"],
        shown["slices_succeeded"],
        shown["slices_failed"],
        shown["slices_running"],
        shown["slices_pending"],
    ) == (total, total, 0, 0, 0), shown
    assert shown["errors"] == [] and shown["finished_at"] is not None, shown
    assert {state for state, _ in slice_rows(job_id).values()} == {"succeeded"}
    start, end = day_start(first), day_start(last) + timedelta(days=1)
    rows = assert_target_matches_oracle(system.dbs.source_url, system.dbs.target_url, start, end)
    assert shown["rows_written"] == rows
    assert target_rows(start, end) == rows  # nothing twice, nothing extra
    return shown
