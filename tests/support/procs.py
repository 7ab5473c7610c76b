"""Real processes for tests: the API (uvicorn, through ``api.serve``), Celery
workers, any server on a free port, and :class:`Tracker`, which stops them.

Each runs in its own session (process group) with its output in a log file,
and :meth:`Proc.stop` ends the whole group, so a prefork worker leaves no
children behind even when a test fails half-way. A test's processes are
tracked by the ``procs`` fixture (a :class:`Tracker`); the fixtures
``api_server``, ``api_factory``, ``metrics_api``, ``worker`` and
``worker_factory`` in ``tests/conftest.py`` start them through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from bench import procs
from bench.procs import free_port
from tests.support.waiting import poll

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_CHARS = 6000


@dataclass
class Proc(procs.Proc):
    """A process started by a test; ``url`` is set for servers. The benchmark's
    process record, with what tests ask of a process besides."""

    hostname: str | None = None  # a Celery worker's node name

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return self.log()[-chars:]

    def wait_for_log(self, text: str, timeout: float = START_TIMEOUT_S) -> bool:
        """Wait until ``text`` appears in the log; False on timeout or exit."""
        held, _ = poll(
            self.log, lambda log: text in log, timeout=timeout, interval=0.1, alive=self.alive
        )
        return held

    def child_pids(self) -> list[int]:
        """Direct children (a prefork worker's pool processes)."""
        try:
            path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
            return [int(p) for p in path.read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            return []

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the main process only."""
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (a warm shutdown), then SIGKILL to the whole group; the exit code."""
        if not self._stopped:
            self._stopped = True
            if self.alive():
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
            # The group is the session this test started: it holds only our processes.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(timeout)
        return self.popen.returncode

    def describe(self) -> str:
        """The process name and the tail of its log, for failure messages."""
        return f"--- {self.name} (pid {self.pid}) log tail ---\n{self.log_tail()}"


def process_env(**overrides: str) -> dict[str, str]:
    """The test's environment (it names the test databases and queue) plus overrides."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **overrides}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def start(name: str, args: list[str], env: dict[str, str], log_dir: Path | None = None) -> Proc:
    """Start ``python args...`` in a new session, its output to a log file."""
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="wf-procs-"))
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, popen, log_path)


def listen_args(port: int, log_level: str = "warning") -> list[str]:
    """uvicorn's (and ``api.serve``'s) options to serve on ``127.0.0.1:port``."""
    return ["--host", "127.0.0.1", "--port", str(port), "--log-level", log_level]


def healthy(status: int | None) -> bool:
    return status == 200


def answered(status: int | None) -> bool:
    """Any HTTP answer at all (an API whose databases are down answers 503)."""
    return status is not None


def serve(
    name: str,
    args: list[str],
    env: dict[str, str],
    *,
    listen: Callable[[int], list[str]] = listen_args,
    health: str = "/health",
    ready: Callable[[int | None], bool] = healthy,
    timeout: float = START_TIMEOUT_S,
    probe_timeout: float = 2.0,
    log_dir: Path | None = None,
) -> Proc:
    """``python args... listen(port)`` on a free port, once ``GET health`` answers
    a status that ``ready`` accepts (None: no answer); ``.url`` is its base URL."""
    for _ in range(3):  # another process may take the free port before the server binds it
        port = free_port()
        proc = start(name, [*args, *listen(port)], env, log_dir)
        proc.url = f"http://127.0.0.1:{port}"

        def status(url: str = f"{proc.url}{health}") -> int | None:
            try:
                return httpx.get(url, timeout=probe_timeout).status_code
            except httpx.HTTPError:
                return None

        if poll(status, ready, timeout=timeout, interval=0.1, alive=proc.alive)[0]:
            return proc
        proc.stop()
        if "address already in use" not in proc.log().lower():
            break
    raise RuntimeError(f"{name} did not answer {health} in {timeout:g} s\n{proc.describe()}")


def app_with_metrics():
    """The API with its metrics and logging set up, for ``uvicorn --factory``: what
    ``api.main.create_app`` builds once it calls both (adding them twice does nothing)."""
    from api.main import create_app
    from api.metrics import install
    from windfarm.logs import setup_logging

    setup_logging()
    app = create_app()
    install(app)
    return app


def run_api(
    env: dict[str, str],
    *,
    timeout: float = START_TIMEOUT_S,
    name: str = "api",
    log_dir: Path | None = None,
    metrics: bool = False,
) -> Proc:
    """The API (``python -m api.serve``) on a free port, once ``/health`` answers 200.
    With ``metrics``: uvicorn serving :func:`app_with_metrics` instead."""
    args = (
        ["-m", "uvicorn", "--factory", f"{__name__}:app_with_metrics"]
        if metrics
        else ["-m", "api.serve"]
    )
    return serve(name, args, env, timeout=timeout, log_dir=log_dir)


def run_worker(
    env: dict[str, str],
    *,
    concurrency: int = 2,
    name: str = "worker",
    queue: str | None = None,
    timeout: float = START_TIMEOUT_S,
    extra_args: tuple[str, ...] = (),
    log_dir: Path | None = None,
) -> Proc:
    """``celery -A workers worker`` on ``queue`` (default: both lanes of ``ETL_QUEUE``),
    once it is ready."""
    queue = queue or lanes(env["ETL_QUEUE"])
    hostname = f"{name}-{os.getpid()}-{time.monotonic_ns()}@%h"
    proc = start(
        name,
        [
            "-m",
            "celery",
            "-A",
            "workers",
            "worker",
            "-Q",
            queue,
            "--pool",
            "prefork",
            "-c",
            str(concurrency),
            "-n",
            hostname,
            "--without-gossip",
            "--without-mingle",
            "-l",
            "info",
            *extra_args,
        ],
        env,
        log_dir,
    )
    if not proc.wait_for_log(" ready.", timeout):
        proc.stop()
        raise RuntimeError(f"the worker was not ready in {timeout:g} s\n{proc.describe()}")
    proc.hostname = hostname.replace("%h", socket.gethostname())
    return proc


def lanes(queue: str) -> str:
    """The two queues of ``ETL_QUEUE``, as ``-Q`` takes them: the bulk and priority lanes."""
    return f"{queue},{queue}.priority"


def purge_queue(broker_url: str, queue: str) -> int:
    """Delete every Redis key of both lanes of ``queue`` and their unacknowledged
    messages; keys removed."""
    client = redis.Redis.from_url(broker_url)
    try:
        removed = 0
        for name in lanes(queue).split(","):
            keys = [
                name,
                *(f"{name}\x06\x16{p}" for p in range(10)),
                f"_kombu.binding.{name}",
                f"_kombu.binding_permanent.{name}",
            ]
            removed += client.delete(*keys)
            for tag, raw in client.hgetall("unacked").items():
                _, _, routing_key = json.loads(raw)
                if routing_key == name:
                    removed += client.hdel("unacked", tag)
                    client.zrem("unacked_index", tag)
        return removed
    finally:
        client.close()


def queue_length(broker_url: str, queue: str) -> int:
    """Messages waiting in ``queue`` (one lane, all priorities)."""
    client = redis.Redis.from_url(broker_url)
    try:
        return sum(client.llen(k) for k in [queue, *(f"{queue}\x06\x16{p}" for p in range(10))])
    finally:
        client.close()


def purge_run_queue() -> int:
    """:func:`purge_queue` of the run's broker and queue (as the environment names them now)."""
    return purge_queue(os.environ["CELERY_BROKER_URL"], os.environ["ETL_QUEUE"])


class Tracker:
    """What a test (or a module's fixture) started: processes, and cleanups for
    anything else (proxies, brokers, the queue).

    :meth:`stop_all` stops the processes, newest first, printing each one's log
    tail (pytest shows it when the test failed), then runs the cleanups, newest
    first. The ``procs`` fixture yields one per test; as a context manager, a
    tracker stops all on exit.
    """

    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self.cleanups: list[Callable[[], object]] = []

    def add(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def defer(self, cleanup: Callable[[], object]) -> None:
        """Run ``cleanup()`` at :meth:`stop_all`, after the processes have stopped."""
        self.cleanups.append(cleanup)

    def __len__(self) -> int:
        return len(self.procs)

    def __iter__(self):
        return iter(self.procs)

    def stop_all(self) -> None:
        errors: list[BaseException] = []
        while self.procs:
            proc = self.procs.pop()
            try:
                proc.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others, then raise
                errors.append(exc)
            print(proc.describe())
        while self.cleanups:
            try:
                self.cleanups.pop()()
            except Exception as exc:  # noqa: BLE001 - run the others, then raise
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_all()
