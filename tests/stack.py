"""More real processes for system tests: beat, Flower and a private Redis.

Complements ``tests/procs.py`` (API and workers). A private Redis lets a test
stop and restart the broker without touching the shared one.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import redis

from tests.procs import START_TIMEOUT_S, Proc, free_port, start


def run_beat(env: dict[str, str], *, name: str = "beat") -> Proc:
    """``celery -A scheduler beat`` with a schedule file of its own."""
    schedule = Path(tempfile.mkdtemp(prefix="wf-beat-")) / "schedule"
    proc = start(name, ["-m", "celery", "-A", "scheduler", "beat", "-l", "info",
                        "--schedule", str(schedule)], env)
    if not proc.wait_for_log("beat: Starting...", START_TIMEOUT_S):
        proc.stop()
        raise RuntimeError(f"beat did not start\n{proc.describe()}")
    return proc


def run_flower(env: dict[str, str], *, name: str = "flower") -> Proc:
    """``celery -A workers flower`` on a free port, once it answers."""
    port = free_port()
    proc = start(name, ["-m", "celery", "-A", "workers", "flower", f"--port={port}",
                        "--address=127.0.0.1"], env)
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
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir),
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, password=self.password,
                            socket_connect_timeout=0.5).ping()
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
