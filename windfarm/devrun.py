"""``make run``: the whole system in the foreground on one machine.

Uses the PostgreSQL and Redis that the settings point at when they answer;
when one does not and it is on this machine, starts a private instance from
the installed binaries (data under ``.run/``). Then creates and seeds the
databases and runs api, workers, beat and flower with prefixed logs. Ctrl-C
(or SIGTERM) stops every process it started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from sqlalchemy.engine import make_url

from windfarm.config import get_settings

RUN_DIR = Path(".run")
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


@dataclass
class Supervisor:
    """Children started here, stopped in reverse order."""

    children: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> None:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # Ctrl-C reaches us, and we stop them in order
        )
        self.children.append((name, proc))
        threading.Thread(target=_relay, args=(name, proc), daemon=True).start()

    def failed(self) -> str | None:
        for name, proc in self.children:
            if proc.poll() is not None:
                return f"{name} exited with status {proc.returncode}"
        return None

    def stop(self) -> None:
        for name, proc in reversed(self.children):
            if proc.poll() is None:
                print(f"[run] stopping {name}", flush=True)
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in reversed(self.children):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()


def _relay(name: str, proc: subprocess.Popen) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(f"{name:>8} | {line}")
        sys.stdout.flush()


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _wait_for(host: str, port: int, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not _answers(host, port):
        if time.monotonic() > deadline:
            raise SystemExit(f"run: {what} did not start on {host}:{port}")
        time.sleep(0.2)


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    return str(candidates[0]) if candidates else None


def _as_postgres_user(argv: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; run it as the postgres account then.
    if os.geteuid() == 0 and shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def ensure_postgres(sup: Supervisor, url: str) -> None:
    parsed = make_url(url)
    host, port = parsed.host or "localhost", parsed.port or 5432
    if _answers(host, port):
        return
    initdb, postgres = _postgres_bin("initdb"), _postgres_bin("postgres")
    if host not in LOCAL_HOSTS or not (initdb and postgres):
        raise SystemExit(
            f"run: PostgreSQL does not answer on {host}:{port} and cannot be started here"
        )
    data = (RUN_DIR / f"pg-{port}").resolve()
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres")
            RUN_DIR.resolve().chmod(0o755)
        user = parsed.username or "postgres"
        subprocess.run(
            _as_postgres_user([initdb, "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8"]),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    print(f"[run] starting a private PostgreSQL on port {port} ({data})", flush=True)
    sup.start(
        "postgres",
        _as_postgres_user([postgres, "-D", str(data), "-p", str(port), "-k", str(data),
                           "-c", "listen_addresses=127.0.0.1"]),
    )
    _wait_for("127.0.0.1", port, "PostgreSQL")


def ensure_redis(sup: Supervisor, url: str) -> None:
    parsed = urlparse(url)
    host, port = parsed.hostname or "localhost", parsed.port or 6379
    if _answers(host, port):
        return
    server = shutil.which("redis-server")
    if host not in LOCAL_HOSTS or not server:
        raise SystemExit(f"run: Redis does not answer on {host}:{port} and cannot be started here")
    print(f"[run] starting a private Redis on port {port}", flush=True)
    sup.start("redis", [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no"])
    _wait_for("127.0.0.1", port, "Redis")


def services(workers: int, port: int) -> list[tuple[str, list[str]]]:
    py = sys.executable
    return [
        ("api", [py, "-m", "uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", str(port)]),
        ("worker", [py, "-m", "celery", "-A", "workers", "worker", "--loglevel=INFO",
                    f"--concurrency={workers}", "-E"]),
        ("beat", [py, "-m", "celery", "-A", "scheduler", "beat", "--loglevel=INFO",
                  "--schedule", str(RUN_DIR / "celerybeat-schedule")]),
        ("flower", [py, "-m", "celery", "-A", "workers", "flower", "--port=5555"]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m windfarm.devrun", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "2")),
                        help="worker processes (default: $WORKERS or 2)")
    parser.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    args = parser.parse_args(argv)
    settings = get_settings()
    RUN_DIR.mkdir(exist_ok=True)
    sup = Supervisor()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        ensure_postgres(sup, settings.source_database_url)
        ensure_postgres(sup, settings.target_database_url)
        ensure_redis(sup, settings.celery_broker_url)
        subprocess.run([sys.executable, "-m", "api.seed_source"], check=True)
        for name, cmd in services(args.workers, args.port):
            sup.start(name, cmd)
        print(f"[run] api http://localhost:{args.port}/docs  flower http://localhost:5555  "
              "(Ctrl-C stops everything)", flush=True)
        while not stop.wait(0.5):
            if problem := sup.failed():
                print(f"[run] {problem}; stopping", flush=True)
                return 1
        return 0
    except KeyboardInterrupt:
        return 0
    except subprocess.CalledProcessError as exc:
        print(f"[run] {exc}", flush=True)
        return 1
    finally:
        sup.stop()


if __name__ == "__main__":
    sys.exit(main())
