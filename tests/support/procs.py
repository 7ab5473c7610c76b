"""Real processes for tests: the API (uvicorn, through ``api.serve``) and Celery workers.

Each runs in its own session (process group) with its output in a log file,
and :meth:`Proc.stop` ends the whole group, so a prefork worker leaves no
children behind even when a test fails half-way. The fixtures ``api_server``,
``api_factory``, ``worker`` and ``worker_factory`` in ``tests/conftest.py``
wrap these helpers.
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
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_CHARS = 6000


@dataclass
class Proc:
    """A process started by a test; ``url`` is set for servers."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    url: str | None = None
    hostname: str | None = None  # a Celery worker's node name
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return self.log()[-chars:]

    def wait_for_log(self, text: str, timeout: float = START_TIMEOUT_S) -> bool:
        """Wait until ``text`` appears in the log; False on timeout or exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if not self.alive():
                return text in self.log()
            time.sleep(0.1)
        return False

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


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def run_api(
    env: dict[str, str],
    *,
    timeout: float = START_TIMEOUT_S,
    name: str = "api",
    log_dir: Path | None = None,
) -> Proc:
    """The API (``python -m api.serve``) on a free port, once ``/health`` answers 200."""
    for _ in range(3):  # another process may take the free port before uvicorn binds it
        port = free_port()
        proc = start(
            name,
            [
                "-m",
                "api.serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env,
            log_dir,
        )
        proc.url = f"http://127.0.0.1:{port}"
        if _wait_healthy(proc, timeout):
            return proc
        proc.stop()
        if "address already in use" not in proc.log().lower():
            break
    raise RuntimeError(f"the API did not become healthy in {timeout:g} s\n{proc.describe()}")


def _wait_healthy(proc: Proc, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.alive():
        try:
            if httpx.get(f"{proc.url}/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


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


def wait_for_job(job_id: int, *, timeout: float = 60.0, procs: tuple[Proc, ...] = ()):
    """Poll ``jobs.get_job`` until the job ends; its view. On timeout, fail with
    the job's state and the log tails of ``procs``."""
    from windfarm import jobs
    from windfarm.db import target_engine

    deadline = time.monotonic() + timeout
    while True:
        with target_engine().connect() as conn:
            view = jobs.get_job(conn, job_id)
        if view is not None and view.ended:
            return view
        if time.monotonic() > deadline:
            logs = "\n".join(p.describe() for p in procs)
            raise AssertionError(f"job {job_id} did not end in {timeout:g} s: {view}\n{logs}")
        time.sleep(0.2)


class FaultyProxy:
    """A small HTTP server in the test process in front of a real API.

    For every GET, ``rule(path_with_query, n)`` (query unquoted) (``n`` counts requests from 0)
    returns ``(status, body)`` to answer itself, :attr:`RESET` to drop the
    connection with a TCP reset instead of answering, or None to forward upstream.
    ``requests`` records every path seen, in order.
    """

    RESET = "reset"

    def __init__(self, upstream: str, rule) -> None:
        import http.server
        import struct
        import threading

        proxy = self
        self.upstream = upstream.rstrip("/")
        self.rule = rule
        self.requests: list[str] = []
        self._lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer = proxy._answer(self.path)
                if answer == FaultyProxy.RESET:
                    # Linger on with a zero timeout: close() sends RST, not FIN.
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                    self.close_connection = True
                    return
                status, body = answer
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up waiting

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def count(self, text: str) -> int:
        """Requests whose path and query contain ``text``."""
        with self._lock:
            return sum(text in path for path in self.requests)

    def _answer(self, path: str) -> tuple[int, bytes] | str:
        readable = urllib.parse.unquote(path)  # "start=2025-12-05T05:00:00", not "%3A"
        with self._lock:
            n = len(self.requests)
            self.requests.append(readable)
        answer = self.rule(readable, n)
        if answer == FaultyProxy.RESET:
            return answer
        if answer is not None:
            status, body = answer
            return status, body if isinstance(body, bytes) else json.dumps(body).encode()
        upstream = httpx.get(self.upstream + path, timeout=30)
        return upstream.status_code, upstream.content

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
