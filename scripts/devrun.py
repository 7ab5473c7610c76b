"""``make run``: the whole system in the foreground on one machine.

    python scripts/devrun.py [--workers N]          # what `make run` runs

Development tooling, not runtime code: it lives outside the installed packages.

It uses the PostgreSQL and Redis that the settings point at when they answer;
when one does not and it is on this machine, it starts a private instance
from the installed binaries (data under ``.run/``, or ``$RUN_DIR``). Then it
creates and seeds the source (``python -m api.seed_source``) and runs the api
(uvicorn), a Celery worker (both lanes, ``$WORKERS`` pool processes, default
2), beat and Flower, each line of their output prefixed with their name.

Addresses
---------
The API (with its dashboard) and Flower listen on this machine's loopback
only, unless the environment says otherwise (the names ``docker-compose.yml``
uses; read from the environment, not from ``.env``)::

    API_BIND=127.0.0.1     API_PORT=8000        the API, its docs and the dashboard
    FLOWER_BIND=127.0.0.1  FLOWER_PORT=5555     Flower

``API_BIND=0.0.0.0 FLOWER_BIND=0.0.0.0`` opens them to the network (set
``API_TOKEN`` and ``FLOWER_BASIC_AUTH`` then). Both ports are checked before
anything starts, and again just before the servers start: a busy one stops the
run with one line that names the variable to set. The workers are pointed at
this API (``API_BASE_URL``), and the dashboard at this Flower (``FLOWER_URL``,
when its port is not 5555 and ``FLOWER_URL`` is unset). Once both answer, a
banner prints the dashboard's, the API docs' and Flower's URLs.

Stopping, and why nothing outlives the supervisor
-------------------------------------------------
Each child runs in a session (and process group) of its own, so that Ctrl-C
at the terminal reaches only this supervisor, which then stops them in order.

1. SIGINT (Ctrl-C), SIGTERM, SIGHUP (the terminal closed) and SIGQUIT start
   an orderly stop: SIGTERM to the main process of api, worker (a warm
   shutdown), beat and Flower; after up to ``STOP_GRACE_S`` s, SIGKILL to each
   one's whole process group, which also takes a prefork worker's pool
   children and anything else a child started; then the private PostgreSQL
   (SIGINT: a fast shutdown) and Redis the same way. A second Ctrl-C skips
   the wait. Output that cannot be written any more (the terminal is gone)
   is dropped and also stops the run; nothing waits on it.
2. The parent going away. ``make`` passes SIGTERM on to its recipe, but sent
   SIGINT or SIGHUP on its own it passes nothing on: its handler waits for
   the recipe to end, then kills make itself. The recipe runs this script
   with ``exec``, so make is the direct parent; every half second the
   supervisor checks it: a different parent (make, or whoever started it,
   died) stops the run, and so does a parent ``make`` inside the handler of
   a terminating signal: the kernel blocks a signal while its handler runs,
   which ``/proc/<make>/status`` shows in ``SigBlk`` (two sightings in a
   row, so make's brief blocking while it reaps a child does not count).
3. The supervisor killed without a chance to clean up (SIGKILL, the OOM
   killer, a crash). Two layers, each covering a gap of the other:

   - ``PR_SET_PDEATHSIG = SIGKILL``, set in each child between ``fork`` and
     ``exec`` (``preexec_fn``, ctypes; after the child's switch to the
     ``postgres`` account, which would clear it): the kernel kills the child
     when the supervisor dies. SIGKILL cannot be caught, so a child wedged
     on its lost log pipe (an orphaned worker was seen ignoring SIGTERM,
     SIGINT and SIGQUIT once writes to that pipe failed) still dies. The
     child exits at once if the supervisor died before the setting took.
     The signal follows the *thread* that forked the child, and
     ``preexec_fn`` is unsafe beside threads: so the supervisor has one
     thread (output is relayed with ``selectors``, not threads).
   - a watchdog process (this script with ``_watchdog``, in a session of its
     own, so neither Ctrl-C nor a hangup reaches it), told on a pipe the
     process group of each child as it starts and as it ends. The death
     signal reaches only direct children and is cleared for their forks
     (Celery's pool processes and PostgreSQL's backends watch their own
     parent; other grandchildren need not); when the pipe reaches
     end-of-file while groups are still listed (the supervisor died), the
     watchdog SIGKILLs every listed group. On an orderly stop the list is
     empty and it simply exits. The death signal, in turn, still works when
     the watchdog was killed too.

Linux is assumed for 2. and the death signal; elsewhere the signal handlers
and the watchdog still apply.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import ipaddress
import os
import pwd
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
WILDCARDS = {"", "0.0.0.0", "::"}
DEFAULT_FLOWER_PORT = 5555
STOP_GRACE_S = 10.0  # how long a child may take over an orderly stop
READY_WAIT_S = 90.0  # how long the banner waits for the API and Flower to answer
PARENT_CHECK_S = 0.5
TERMINATING = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)
WATCHDOG_ARG = "_watchdog"
_PR_SET_PDEATHSIG = 1


class Fatal(Exception):
    """A reason to stop that the user can act on: printed as one ``run:`` line."""


class Stop(Exception):
    """A request to stop (a signal, the parent or the terminal gone)."""


# --- Settings of the run itself --------------------------------------------------


@dataclass(frozen=True)
class Config:
    api_bind: str
    api_port: int
    flower_bind: str
    flower_port: int
    workers: int
    run_dir: Path


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip() or str(default)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise Fatal(f"{name} must be a port number (1-65535), not {raw!r}")
    return int(raw)


def read_config(argv: list[str]) -> Config:
    parser = argparse.ArgumentParser(
        prog="python scripts/devrun.py",
        description="make run: the whole system in the foreground on one machine.",
    )
    parser.add_argument(
        "--workers",
        default=os.environ.get("WORKERS", "2"),
        help="worker pool processes (default: $WORKERS or 2)",
    )
    args = parser.parse_args(argv)
    if not str(args.workers).isdigit() or int(args.workers) < 1:
        raise Fatal(f"WORKERS must be a whole number of 1 or more, not {args.workers!r}")
    run_dir = Path(os.environ.get("RUN_DIR") or REPO / ".run")
    return Config(
        api_bind=os.environ.get("API_BIND", "127.0.0.1").strip(),
        api_port=_port("API_PORT", 8000),
        flower_bind=os.environ.get("FLOWER_BIND", "127.0.0.1").strip(),
        flower_port=_port("FLOWER_PORT", DEFAULT_FLOWER_PORT),
        workers=int(args.workers),
        run_dir=run_dir.resolve(),
    )


def _bind_error(host: str, port: int) -> OSError | None:
    """Why a server could not listen on ``host:port`` now; None when it could."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return exc
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            # As the servers do: a port with only closed connections in TIME_WAIT is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return exc
    return None


def check_ports(cfg: Config) -> None:
    """One clear line (:class:`Fatal`) when the API or Flower could not listen."""
    if cfg.api_port == cfg.flower_port:
        raise Fatal(f"API_PORT and FLOWER_PORT are both {cfg.api_port}; set one of them")
    for what, host, port, port_var, bind_var in (
        ("API", cfg.api_bind, cfg.api_port, "API_PORT", "API_BIND"),
        ("Flower", cfg.flower_bind, cfg.flower_port, "FLOWER_PORT", "FLOWER_BIND"),
    ):
        exc = _bind_error(host, port)
        if exc is None:
            continue
        if isinstance(exc, socket.gaierror):
            raise Fatal(f"{bind_var}={host!r} is not an address ({exc.strerror})")
        if exc.errno == errno.EADDRINUSE:
            raise Fatal(f"port {port} ({what}) is in use; set {port_var}")
        if exc.errno == errno.EADDRNOTAVAIL:
            raise Fatal(f"{bind_var}={host} is not an address of this machine; set {bind_var}")
        if exc.errno == errno.EACCES:
            raise Fatal(f"port {port} ({what}) needs privileges; set {port_var} to 1024 or above")
        raise Fatal(f"cannot listen on {host}:{port} ({what}): {exc.strerror}; set {port_var}")


def connect_host(bind: str) -> str:
    """Where this machine reaches a server bound to ``bind``."""
    if bind in WILDCARDS:
        return "::1" if bind == "::" else "127.0.0.1"
    return bind


def _url(host: str, port: int, path: str = "/") -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def _loopback_only(bind: str) -> bool:
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


# --- Children ------------------------------------------------------------------


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


# Loaded here, in the supervisor: a forked child only calls it.
_PRCTL = _load_prctl()
_SIGKILL = int(signal.SIGKILL)


def _die_with(parent: int):
    """``preexec_fn``: the child gets SIGKILL when ``parent`` (this supervisor) dies."""

    def setup() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before the setting took
            os._exit(1)

    return setup


@dataclass
class Child:
    name: str
    popen: subprocess.Popen
    infra: bool  # a private PostgreSQL or Redis: stopped after the others
    stop_signal: int
    service: bool  # runs until stopped (a one-shot like the seeding is not)
    pending: bytearray = field(default_factory=bytearray)
    eof: bool = False

    @property
    def pgid(self) -> int:
        return self.popen.pid  # the leader of a session of its own

    def alive(self) -> bool:
        return self.popen.poll() is None


class Supervisor:
    """The children, their output, the signals and the watchdog; one thread."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.selector = selectors.DefaultSelector()
        self.requested: str | None = None
        self.stopping = False
        self.hurry = False
        self.output_ok = True
        self.watchdog: subprocess.Popen | None = None
        self._parent = os.getppid()
        self._parent_sightings = 0
        self._next_parent_check = 0.0
        # A signal wakes the selector at once (set_wakeup_fd), not at its next timeout.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)

    # Signals and the reasons to stop.

    def on_signal(self, signum: int, _frame: object) -> None:
        if self.stopping:
            if signum == signal.SIGINT:
                self.hurry = True  # a second Ctrl-C: no more waiting
            return
        self.requested = self.requested or signal.Signals(signum).name

    def _check(self) -> None:
        if self.requested:
            raise Stop(self.requested)
        if not self.output_ok:
            raise Stop("the output is gone")
        now = time.monotonic()
        if now >= self._next_parent_check:
            self._next_parent_check = now + PARENT_CHECK_S
            if os.getppid() != self._parent:
                raise Stop("the process that started the run is gone")
            self._parent_sightings = (
                self._parent_sightings + 1 if make_is_stopping(self._parent) else 0
            )
            if self._parent_sightings >= 2:
                raise Stop("make was told to stop")

    # Output.

    def _emit(self, data: bytes) -> None:
        if not self.output_ok:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(1, view) :]
        except OSError:  # EIO (the terminal closed) or EPIPE: drop output from now on
            self.output_ok = False

    def say(self, message: str) -> None:
        self._emit(f"[run] {message}\n".encode())

    def _relay(self, child: Child, data: bytes) -> None:
        child.pending += data
        *lines, rest = child.pending.split(b"\n")
        if len(rest) > 65536 or (child.eof and rest):
            lines.append(rest)
            rest = b""
        child.pending = bytearray(rest)
        if lines:
            prefix = f"{child.name:>8} | ".encode()
            self._emit(b"".join(prefix + line + b"\n" for line in lines))

    def _read(self, child: Child) -> None:
        try:
            data = os.read(child.popen.stdout.fileno(), 65536)
        except OSError:
            data = b""
        if not data:
            child.eof = True
            self.selector.unregister(child.popen.stdout)
        self._relay(child, data)

    def pump(self, seconds: float) -> None:
        """Relay the children's output for ``seconds``; :class:`Stop` when asked to stop
        (never while stopping)."""
        deadline = time.monotonic() + seconds
        while True:
            if not self.stopping:
                self._check()
            elif self.hurry:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._dispatch(min(left, PARENT_CHECK_S))

    def _dispatch(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            if key.data is None:  # the signal wake-up pipe: empty it
                with contextlib.suppress(OSError):
                    while os.read(self._wake_r, 512):
                        pass
            else:
                self._read(key.data)

    # Starting and ending children.

    def _tell_watchdog(self, line: str) -> None:
        if self.watchdog is None or self.watchdog.stdin is None:
            return
        try:
            self.watchdog.stdin.write(f"{line}\n".encode())
            self.watchdog.stdin.flush()
        except OSError:
            self.watchdog = None  # it died; the death signal still covers direct children

    def start_watchdog(self) -> None:
        self.watchdog = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), WATCHDOG_ARG],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
            start_new_session=True,
        )

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        infra: bool = False,
        stop_signal: int = signal.SIGTERM,
        user: str | None = None,
        service: bool = True,
    ) -> Child:
        identity: dict[str, object] = {}
        if user is not None:
            account = pwd.getpwnam(user)
            identity = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        popen = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only us; we stop them in order
            preexec_fn=_die_with(os.getpid()),
            **identity,
        )
        child = Child(name, popen, infra, stop_signal, service)
        self.children.append(child)
        self._tell_watchdog(f"+{child.pgid}")
        self.selector.register(popen.stdout, selectors.EVENT_READ, child)
        return child

    def run_once(
        self, name: str, argv: list[str], *, env: dict[str, str], user: str | None = None
    ) -> None:
        """Run a command to its end, its output relayed; :class:`Fatal` if it fails."""
        child = self.start(name, argv, env=env, user=user, service=False)
        while child.alive():
            self.pump(0.1)
        self._end(child)
        if child.popen.returncode != 0:
            raise Fatal(f"{name} failed with status {child.popen.returncode}")

    def _end(self, child: Child) -> None:
        """SIGKILL what is left of the child's group, reap it, relay its last output."""
        with contextlib.suppress(OSError):
            os.killpg(child.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.popen.wait(5)
        # The signal is sent to the whole group at once, but each process dies
        # when it is next scheduled: what the child forked (a worker's pool)
        # can outlive the child's reaping by a moment on a busy machine.
        deadline = time.monotonic() + 2
        while group_alive(child.pgid) and time.monotonic() < deadline:
            time.sleep(0.02)
        deadline = time.monotonic() + 2
        while not child.eof and time.monotonic() < deadline:
            self._dispatch(0.1)
        if not child.eof:
            self.selector.unregister(child.popen.stdout)
        child.popen.stdout.close()
        self.children.remove(child)
        self._tell_watchdog(f"-{child.pgid}")

    def failed(self) -> str | None:
        for child in self.children:
            if child.service and not child.alive():
                return f"{child.name} exited with status {child.popen.returncode}"
        return None

    def stop(self) -> None:
        """The services, then the private databases: SIGTERM (or their own stop signal),
        up to STOP_GRACE_S, then SIGKILL to each whole process group."""
        self.stopping = True
        for infra in (False, True):
            tier = [c for c in self.children if c.infra == infra]
            for child in reversed(tier):
                if child.alive():
                    self.say(f"stopping {child.name}")
                    with contextlib.suppress(OSError):
                        child.popen.send_signal(child.stop_signal)
            deadline = time.monotonic() + STOP_GRACE_S
            while any(c.alive() for c in tier) and time.monotonic() < deadline and not self.hurry:
                self.pump(0.1)
            for child in tier:
                if child.alive():
                    self.say(f"{child.name} did not stop in time: killing it")
                self._end(child)
        if self.watchdog is not None:
            with contextlib.suppress(OSError):
                self.watchdog.stdin.close()  # end-of-file with nothing listed: it exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.watchdog.wait(5)

    def close(self) -> None:
        """Give back the signal wake-up pipe (after :meth:`stop`)."""
        signal.set_wakeup_fd(-1)
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is alive. A zombie counts as dead: it
    only waits to be reaped, and an orphan's reaper (PID 1 of a container) may
    never do it. Without ``/proc`` nothing is known, and nothing is waited for."""
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            state, _, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(group) == pgid and state not in ("Z", "X"):
            return True
    return False


def make_is_stopping(pid: int) -> bool:
    """Whether ``pid`` is GNU make inside the handler of a terminating signal (it then
    waits for its recipe to end, passing the signal on only for SIGTERM)."""
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() not in ("make", "gmake"):
            return False
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigBlk:"):
                blocked = int(line.split()[1], 16)
                return any((blocked >> (int(sig) - 1)) & 1 for sig in TERMINATING)
    except (OSError, ValueError, IndexError):
        return False
    return False


def watchdog() -> int:
    """The watchdog process: SIGKILL the process groups still listed on stdin once it
    ends (the supervisor is gone). ``+pgid`` lists a group, ``-pgid`` removes it."""
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # clean up on the way out
    groups: set[int] = set()
    try:
        for line in sys.stdin.buffer:
            text = line.strip()
            with contextlib.suppress(ValueError):
                if text.startswith(b"+"):
                    groups.add(int(text[1:]))
                elif text.startswith(b"-"):
                    groups.discard(int(text[1:]))
    finally:
        for pgid in groups:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
    return 0


# --- PostgreSQL and Redis --------------------------------------------------------


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _wait_for(sup: Supervisor, host: str, port: int, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not _answers(host, port):
        if problem := sup.failed():
            raise Fatal(problem)
        if time.monotonic() > deadline:
            raise Fatal(f"{what} did not start on {host}:{port}")
        sup.pump(0.2)


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    return str(candidates[0]) if candidates else None


def ensure_postgres(sup: Supervisor, url: str, cfg: Config, env: dict[str, str]) -> None:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    host, port = parsed.host or "localhost", parsed.port or 5432
    if _answers(host, port):
        return
    initdb, postgres = _postgres_bin("initdb"), _postgres_bin("postgres")
    if host not in LOCAL_HOSTS or not (initdb and postgres):
        raise Fatal(f"PostgreSQL does not answer on {host}:{port} and cannot be started here")
    # PostgreSQL refuses to run as root: run it as the postgres account then.
    user = "postgres" if os.geteuid() == 0 else None
    data = cfg.run_dir / f"pg-{port}"
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if user:
            shutil.chown(data, user)
            cfg.run_dir.chmod(0o755)
        sup.run_once(
            "initdb",
            [
                initdb,
                "-D",
                str(data),
                "-U",
                parsed.username or "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            env=env,
            user=user,
        )
    sup.say(f"starting a private PostgreSQL on port {port} ({data})")
    sup.start(
        "postgres",
        [
            postgres,
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(data),
            "-c",
            "listen_addresses=127.0.0.1",
        ],
        env=env,
        infra=True,
        stop_signal=signal.SIGINT,
        user=user,
    )  # SIGINT: fast
    _wait_for(sup, "127.0.0.1", port, "PostgreSQL")


def ensure_redis(sup: Supervisor, url: str, cfg: Config, env: dict[str, str]) -> None:
    parsed = urlparse(url)
    host, port = parsed.hostname or "localhost", parsed.port or 6379
    if _answers(host, port):
        return
    server = shutil.which("redis-server")
    if host not in LOCAL_HOSTS or not server:
        raise Fatal(f"Redis does not answer on {host}:{port} and cannot be started here")
    sup.say(f"starting a private Redis on port {port}")
    sup.start(
        "redis",
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(cfg.run_dir),
        ],
        env=env,
        infra=True,
    )
    _wait_for(sup, "127.0.0.1", port, "Redis")


# --- The run -------------------------------------------------------------------


def child_env(cfg: Config) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The workers fetch from the API started here, wherever API_BASE_URL pointed.
    env["API_BASE_URL"] = _url(connect_host(cfg.api_bind), cfg.api_port, "")
    if not env.get("FLOWER_URL") and cfg.flower_port != DEFAULT_FLOWER_PORT:
        # The dashboard links to port 5555 of its own host unless told.
        env["FLOWER_URL"] = _url(connect_host(cfg.flower_bind), cfg.flower_port)
    return env


def services(cfg: Config) -> list[tuple[str, list[str]]]:
    py = sys.executable
    return [
        (
            "api",
            [
                py,
                "-m",
                "api.serve",
                "--host",
                cfg.api_bind,
                "--port",
                str(cfg.api_port),
                "--timeout-graceful-shutdown",
                "5",
            ],
        ),
        # Both lanes (ETL_QUEUE and ETL_QUEUE.priority): the app's default queues.
        (
            "worker",
            [
                py,
                "-m",
                "celery",
                "-A",
                "workers",
                "worker",
                "--loglevel=INFO",
                f"--concurrency={cfg.workers}",
            ],
        ),
        (
            "beat",
            [
                py,
                "-m",
                "celery",
                "-A",
                "scheduler",
                "beat",
                "--loglevel=INFO",
                "--schedule",
                str(cfg.run_dir / "celerybeat-schedule"),
            ],
        ),
        # Flower needs the app only, no task code.
        (
            "flower",
            [
                py,
                "-m",
                "celery",
                "-A",
                "windfarm.queue",
                "flower",
                f"--address={cfg.flower_bind}",
                f"--port={cfg.flower_port}",
            ],
        ),
    ]


def wait_ready(sup: Supervisor, cfg: Config) -> str | None:
    """Wait until the API and Flower answer; a child's exit if one ends first."""
    targets = [
        (connect_host(cfg.api_bind), cfg.api_port),
        (connect_host(cfg.flower_bind), cfg.flower_port),
    ]
    deadline = time.monotonic() + READY_WAIT_S
    while not all(_answers(host, port) for host, port in targets):
        if problem := sup.failed():
            return problem
        if time.monotonic() > deadline:
            sup.say(f"the API or Flower does not answer after {READY_WAIT_S:g} s")
            return None
        sup.pump(0.25)
    return None


def banner(sup: Supervisor, cfg: Config) -> None:
    api_host, flower_host = connect_host(cfg.api_bind), connect_host(cfg.flower_bind)
    sup.say("ready; Ctrl-C stops everything")
    sup.say(f"  dashboard  {_url(api_host, cfg.api_port)}")
    sup.say(f"  API docs   {_url(api_host, cfg.api_port, '/docs')}")
    sup.say(f"  Flower     {_url(flower_host, cfg.flower_port)}")
    opened = [
        f"{what} on {bind or '*'}"
        for what, bind in (("the API", cfg.api_bind), ("Flower", cfg.flower_bind))
        if not _loopback_only(bind)
    ]
    if opened:
        sup.say(
            f"listening for other machines too: {', '.join(opened)}; set API_TOKEN "
            "and FLOWER_BASIC_AUTH"
        )
    else:
        sup.say(
            "only this machine can reach them: API_BIND=0.0.0.0 FLOWER_BIND=0.0.0.0 "
            "open them to the network"
        )


def _error(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"run: {message}\n")
        sys.stderr.flush()


def run(cfg: Config, sup: Supervisor) -> int:
    sys.path.insert(0, str(REPO))
    from windfarm.config import get_settings

    try:
        settings = get_settings()
    except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError and the like
        raise Fatal(f"the settings are not valid: {exc}") from None
    env = child_env(cfg)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    ensure_postgres(sup, settings.source_database_url, cfg, env)
    ensure_postgres(sup, settings.target_database_url, cfg, env)
    ensure_redis(sup, settings.celery_broker_url, cfg, env)
    sup.run_once("seed", [sys.executable, "-m", "api.seed_source"], env=env)
    check_ports(cfg)  # again: seeding takes a while
    for name, argv in services(cfg):
        sup.start(name, argv, env=env)
    problem = wait_ready(sup, cfg)
    if problem is None:
        banner(sup, cfg)
    while problem is None:
        sup.pump(0.5)
        problem = sup.failed()
    sup.say(f"{problem}; stopping")
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [WATCHDOG_ARG]:
        return watchdog()
    os.chdir(REPO)
    try:
        cfg = read_config(argv)
        check_ports(cfg)
    except Fatal as exc:
        _error(str(exc))
        return 1
    sup = Supervisor()
    for sig in TERMINATING:
        signal.signal(sig, sup.on_signal)
    try:
        sup.start_watchdog()
        return run(cfg, sup)
    except Stop as reason:
        sup.say(f"{reason}: stopping everything")
        return 0
    except Fatal as exc:
        _error(str(exc))
        return 1
    finally:
        sup.stop()
        sup.close()


if __name__ == "__main__":
    sys.exit(main())
