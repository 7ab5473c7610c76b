"""The benchmark's processes: the API and Celery worker nodes, each in a session
of its own (so a stop ends its pool children too), and the CPU time they and
the services they talk to spend.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    url: str | None = None
    metrics_port: int | None = None  # a worker node's Prometheus port
    _stopped: bool = field(default=False, repr=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL to the whole session."""
        stop_all([self], timeout=timeout)


def stop_all(started: list[Proc], *, timeout: float = 10) -> None:
    """Stop these processes together: SIGTERM to each, one wait for them all,
    then SIGKILL to the sessions of those still there."""
    started = [proc for proc in started if not proc._stopped]
    for proc in started:
        proc._stopped = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in started:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(max(0.1, deadline - time.monotonic()))
    for proc in started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(timeout)


def start(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Proc:
    """``python args...`` in a new session, its output in ``log_dir/name.log``."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, popen, log_path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_api(env: dict[str, str], log_dir: Path, *, into: list[Proc], timeout: float = 60) -> Proc:
    """The API (``python -m api.serve``) on a free port, once ``/health`` answers
    200. It joins ``into`` at once, so a stop while it starts stops it too."""
    port = free_port()
    proc = start(
        "api",
        ["-m", "api.serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env,
        log_dir,
    )
    proc.url = f"http://127.0.0.1:{port}"
    into.append(proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.popen.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{proc.url}/health", timeout=2).status_code == 200:
                return proc
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"the API did not start:\n{proc.log()[-3000:]}")


def worker_args(hostname: str, concurrency: int) -> list[str]:
    """The arguments of the ``celery`` command for one benchmark worker node."""
    return [
        *("-A", "workers", "worker", "--pool", "prefork", "-c", str(concurrency)),
        *("-n", hostname, "--without-gossip", "--without-mingle", "-l", "warning"),
    ]


def start_worker(
    env: dict[str, str],
    log_dir: Path,
    *,
    name: str,
    concurrency: int,
    into: list[Proc],
    timeout: float = 60,
) -> Proc:
    """One ``celery -A workers worker`` node (both lanes), once it is ready; it
    joins ``into`` at once."""
    hostname = f"{name}-{os.getpid()}-{time.monotonic_ns()}@%h"
    port = free_port()
    env = {**env, "ETL_METRICS_PORT": str(port)}
    proc = start(name, ["-m", "celery", *worker_args(hostname, concurrency)], env, log_dir)
    proc.metrics_port = port
    into.append(proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.popen.poll() is None:
        # At WARNING the worker prints nothing when ready; its pool children are the sign.
        if len(_children(proc.popen.pid)) >= concurrency:
            time.sleep(0.5)  # let the consumer start
            return proc
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"worker {name} did not start:\n{proc.log()[-3000:]}")


PHASE_LINE = re.compile(
    r'^windfarm_etl_worker_slice_duration_seconds_(sum|count)\{phase="(\w+)"\} (\S+)$', re.M
)


def phase_totals(nodes: list[Proc]) -> dict[str, list[float]]:
    """Seconds and slices each phase (fetch, compute, write) has taken so far,
    summed over the worker nodes' metrics (0 for a node that does not answer)."""
    totals: dict[str, list[float]] = {}
    for node in nodes:
        if node.metrics_port is None:
            continue
        try:
            text = httpx.get(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5).text
        except httpx.HTTPError:
            continue
        for kind, phase, value in PHASE_LINE.findall(text):
            entry = totals.setdefault(phase, [0.0, 0.0])
            entry[0 if kind == "sum" else 1] += float(value)
    return totals


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(_children(current))
    return found


def named(name: str) -> list[int]:
    """Processes whose command is ``name`` (postgres, redis-server)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == name:
                    pids.append(int(entry.name))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time of these processes, with that of their children
    that have exited and been waited for."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            # utime, stime, cutime, cstime: fields 14-17 of stat, 12-15 after the name.
            total += sum(int(f) for f in fields[11:15])
    return total / CLOCK_TICKS


def cpu_by_process(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each of these processes, counted as :func:`cpu_seconds` does."""
    return {pid: cpu_seconds([pid]) for pid in pids}


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="wf-bench-"))
