"""A system of real processes for system tests: beat, Flower, a private Redis,
and :class:`System`, which starts a test's API, workers and beat.

Complements ``tests/support/procs.py`` (API and workers). A private Redis lets
a test stop and restart the broker without touching the shared one. The
``system`` fixture (``tests/conftest.py``) gives a test a :class:`System` on
its own databases, holding the test's :class:`~tests.support.procs.Tracker`,
which stops everything afterwards.
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

import redis
from sqlalchemy import text

from tests.support.databases import Databases
from tests.support.jobs import get_job, post_job, slice_rows
from tests.support.oracle import assert_target_matches_oracle
from tests.support.procs import (
    START_TIMEOUT_S,
    Proc,
    Tracker,
    answered,
    free_port,
    process_env,
    run_api,
    run_worker,
    serve,
    start,
)
from tests.support.waiting import poll, wait_for_job
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
    return serve(
        name,
        ["-m", "celery", "-A", "workers", "flower"],
        env,
        listen=lambda port: [f"--port={port}", "--address=127.0.0.1"],
        health="/healthcheck",
        ready=answered,
    )


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
        if not poll(self._pings, timeout=10, interval=0.05)[0]:
            raise RuntimeError(f"redis-server did not start on port {self.port}")

    def _pings(self) -> bool:
        try:
            return redis.Redis(
                port=self.port, password=self.password, socket_connect_timeout=0.5
            ).ping()
        except redis.ConnectionError:
            return False

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
    """The processes of one test, on its own databases; ``api`` is the one jobs are
    posted to. ``tracker`` stops them (and runs ``cleanups``) at the end."""

    dbs: Databases
    tracker: Tracker = field(default_factory=Tracker)
    api: Proc | None = None

    @property
    def procs(self) -> list[Proc]:
        return self.tracker.procs

    @property
    def cleanups(self) -> list[Callable[[], object]]:
        return self.tracker.cleanups

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
        return self.tracker.add(proc)

    def post(self, body: dict, *, api: Proc | None = None) -> dict:
        return post_job((api or self.api).url, body)

    def job(self, job_id: int) -> dict:
        return get_job(self.api.url, job_id)

    def wait(self, job_id: int, *, timeout: float = 90) -> dict:
        """The job as GET /jobs/{id} shows it once it has ended."""
        return wait_for_job(job_id, api=self.api.url, timeout=timeout, procs=self.procs)

    def wait_progress(self, job_id: int, succeeded: int, *, timeout: float = 60) -> dict:
        return wait_for_job(
            job_id,
            api=self.api.url,
            done=lambda job: job["slices_succeeded"] >= succeeded,
            timeout=timeout,
            what=f"job {job_id} to reach {succeeded} slices succeeded",
            procs=self.procs,
        )


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
