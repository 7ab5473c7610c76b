"""``make run``'s supervisor (``scripts/devrun.py``): safe to expose, stops cleanly.

Each test runs the real supervisor (directly, through ``make run``, or on a
terminal of its own) on databases, a Redis database and queue, ports and a
run directory of its own, and tags every process it starts with an
environment variable, so that "nothing left running" is checked over the
whole machine, not just over the process tree it had.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.databases import PG_URL, REDIS_URL
from tests.support.procs import REPO, Tracker, free_port, process_env, purge_queue
from tests.support.waiting import poll, until
from windfarm.db import drop_database

SCRIPT = REPO / "scripts" / "devrun.py"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
TAG_VAR = "DEVRUN_TEST_TAG"
READY_TIMEOUT_S = 120.0
# The supervisor gives each tier up to 10 s: with nothing slow in hand it takes ~2 s.
STOP_BOUND_S = 30.0
KILL_BOUND_S = 15.0
# Settings a developer's shell may hold that would change what is tested.
UNSET = (
    "API_BIND",
    "FLOWER_BIND",
    "API_BASE_URL",
    "FLOWER_URL",
    "FLOWER_ADDRESS",
    "FLOWER_PORT",
    "API_PORT",
    "RUN_DIR",
    "WORKERS",
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
)


# --- Processes, seen through /proc ------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of ``pid``, or None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def process_tree(root: int) -> dict[int, tuple[int, str]]:
    """``root`` and all its descendants: pid -> (start time, command line)."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[1], []).append(pid)
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        stat = _stat(pid)
        if stat is None:
            continue
        tree[pid] = (stat[2], _cmdline(pid))
        todo.extend(children.get(pid, []))
    return tree


def _running(pid: int, start: int) -> bool:
    """The same process (same start time), not yet dead (a zombie counts as dead: PID 1
    of a container may never reap what it inherits)."""
    stat = _stat(pid)
    return stat is not None and stat[2] == start and stat[0] not in ("Z", "X")


def tagged(tag: str) -> dict[int, str]:
    """Every live process on the machine whose environment carries ``tag``."""
    needle = f"{TAG_VAR}={tag}".encode()
    found = {}
    for pid in _pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        stat = _stat(pid)
        if needle in environ.split(b"\0") and stat is not None and stat[0] not in ("Z", "X"):
            found[pid] = _cmdline(pid)
    return found


def wait_gone(tree: dict[int, tuple[int, str]], tag: str, bound: float) -> None:
    def left() -> dict[int, str]:
        running = {pid: cmd for pid, (start, cmd) in tree.items() if _running(pid, start)}
        return {**running, **tagged(tag)}

    until(left, lambda running: not running, timeout=bound, what="every process gone")


def listening(port: int) -> set[str]:
    """Local addresses of the sockets listening on TCP ``port`` (IPv4 and IPv6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                address, hex_port = fields[1].split(":")
                if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    raw = bytes.fromhex(address)
                    # The kernel writes each 32-bit word in host (little-endian) order.
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                    family = socket.AF_INET if width == 8 else socket.AF_INET6
                    found.add(socket.inet_ntop(family, words))
    return found


def other_local_address() -> str | None:
    """An IPv4 address of this machine other than loopback, if it has one."""
    candidates = set()
    with contextlib.suppress(OSError):
        candidates.update(socket.gethostbyname_ex(socket.gethostname())[2])
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.connect(("192.0.2.1", 9))  # picks the outgoing address; sends nothing
        candidates.add(udp.getsockname()[0])
    return next((a for a in sorted(candidates) if not a.startswith("127.")), None)


# --- A run of the supervisor --------------------------------------------------------


@dataclass
class Run:
    env: dict[str, str]
    tag: str
    api_port: int
    flower_port: int
    run_dir: Path


def _tidy(run: Run, dbs: list[str], broker: str | None) -> None:
    """What a run may leave: its processes (a failed test must leave nothing behind
    either), databases, queue and run directory."""
    for pid in tagged(run.tag):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for url in dbs:
        drop_database(url)
    if broker:
        purge_queue(broker, run.env["ETL_QUEUE"])
    shutil.rmtree(run.run_dir, ignore_errors=True)


@pytest.fixture
def make_env(procs: Tracker) -> Callable[..., Run]:
    """``make_env(private=False)``: the environment of one run, tidied after the test.
    ``private``: PostgreSQL and Redis on free ports nobody answers on, so the
    supervisor starts its own."""

    def build(*, private: bool = False) -> Run:
        tag = uuid.uuid4().hex[:10]
        # Directly under /tmp: a private PostgreSQL runs as `postgres` and must reach it.
        run_dir = Path(tempfile.mkdtemp(prefix=f"devrun-{tag}-", dir="/tmp"))
        if private:
            pg, broker = (
                f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}",
                f"redis://127.0.0.1:{free_port()}/0",
            )
        else:
            pg, broker = PG_URL, f"{REDIS_URL}/12"
        dbs = [f"{pg}/wf_devrun_{tag}_source", f"{pg}/wf_devrun_{tag}_target"]
        api_port, flower_port = free_port(), free_port()
        while flower_port == api_port:
            flower_port = free_port()
        env = process_env(
            SOURCE_DATABASE_URL=dbs[0],
            TARGET_DATABASE_URL=dbs[1],
            CELERY_BROKER_URL=broker,
            ETL_QUEUE=f"etl-devrun-{tag}",
            API_PORT=str(api_port),
            FLOWER_PORT=str(flower_port),
            RUN_DIR=str(run_dir),
            WORKERS="1",
            ETL_CATCHUP_DAYS="0",
            **{TAG_VAR: tag},
        )
        for name in UNSET:
            if name not in ("API_PORT", "FLOWER_PORT", "RUN_DIR", "WORKERS"):
                env.pop(name, None)
        run = Run(env, tag, api_port, flower_port, run_dir)
        procs.defer(lambda: _tidy(run, [] if private else dbs, None if private else broker))
        return run

    return build


def start_supervisor(run: Run, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT)],
            cwd=REPO,
            env=run.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_make(run: Run, log: Path) -> subprocess.Popen:
    """``make run`` with this interpreter's virtualenv, told not to reinstall it."""
    venv = sys.prefix
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                "make",
                "--no-print-directory",
                "-o",
                f"{venv}/.run-installed",
                "run",
                f"VENV={venv}",
            ],
            cwd=REPO,
            env=run.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # As from a terminal: a test run in the background of a non-interactive
            # shell (CI) hands its children SIGINT and SIGQUIT ignored, and make
            # would then ignore the Ctrl-C the test sends it.
            preexec_fn=_default_signals,
        )


def _default_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


def wait_ready(run: Run, proc: subprocess.Popen, output: Callable[[], str]) -> None:
    """Until the API answers /health, Flower answers, the worker is ready and the
    banner is out."""

    def ready() -> bool:
        assert proc.poll() is None, f"the run ended ({proc.returncode}):\n{output()[-6000:]}"
        text = output()
        if "[run] ready" not in text or " ready." not in text:
            return False
        try:
            api = httpx.get(f"http://127.0.0.1:{run.api_port}/health", timeout=2)
            flower = httpx.get(f"http://127.0.0.1:{run.flower_port}/healthcheck", timeout=2)
        except httpx.HTTPError:
            return False
        return api.status_code == 200 and flower.status_code == 200

    until(ready, timeout=READY_TIMEOUT_S, what=lambda: f"the run ready:\n{output()[-6000:]}")


def full_tree(root: int, run: Run) -> dict[int, tuple[int, str]]:
    """The run's process tree, checked to hold every role."""
    tree = process_tree(root)
    commands = [cmd for _, cmd in tree.values()]
    for role in (
        "-m api.serve",
        "-A scheduler beat",
        "-A windfarm.queue flower",
        "devrun.py _watchdog",
    ):
        assert any(role in cmd for cmd in commands), f"no {role!r} in {commands}"
    # The worker's main process and its pool child (WORKERS=1).
    assert sum("-A workers worker" in cmd for cmd in commands) >= 2, commands
    return tree


def log_reader(path: Path) -> Callable[[], str]:
    return lambda: path.read_text(errors="replace") if path.exists() else ""


# --- Tests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "var", "holder"),
    [
        ("API", "API_PORT", "127.0.0.1"),
        ("Flower", "FLOWER_PORT", "0.0.0.0"),  # a listener on every address takes loopback too
    ],
)
def test_busy_port_is_one_clear_line(make_env, what, var, holder):
    run = make_env()
    with socket.socket() as busy:
        busy.bind((holder, 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**run.env, var: str(port)}
        done = subprocess.run(
            [sys.executable, str(SCRIPT)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    output = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode != 0
    assert output == [f"run: port {port} ({what}) is in use; set {var}"]
    assert tagged(run.tag) == {}


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        ({"API_PORT": "http"}, "run: API_PORT must be a port number (1-65535), not 'http'"),
        (
            {"API_PORT": "8123", "FLOWER_PORT": "8123"},
            "run: API_PORT and FLOWER_PORT are both 8123; set one of them",
        ),
        (
            {"FLOWER_BIND": "198.51.100.7"},
            "run: FLOWER_BIND=198.51.100.7 is not an address of this machine; set FLOWER_BIND",
        ),
    ],
)
def test_bad_settings_are_one_clear_line(make_env, settings, line):
    run = make_env()
    done = subprocess.run(
        [sys.executable, str(SCRIPT)],
        cwd=REPO,
        env={**run.env, **settings},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert (done.stdout + done.stderr).strip().splitlines() == [line]


def test_stop_kills_the_group_of_a_child_that_ignores_sigterm(monkeypatch, capfd):
    """After the grace, the whole process group goes: a child wedged past SIGTERM, and
    what it forked (as a prefork worker's pool)."""
    spec = importlib.util.spec_from_file_location("devrun_under_test", SCRIPT)
    devrun = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, devrun)  # its dataclasses look it up
    spec.loader.exec_module(devrun)
    monkeypatch.setattr(devrun, "STOP_GRACE_S", 1.0)
    code = (
        "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "os.fork(); print('up', flush=True); time.sleep(60)"
    )
    sup = devrun.Supervisor()
    try:
        child = sup.start("stubborn", [sys.executable, "-c", code], env=dict(os.environ))

        def pumped_tree() -> dict[int, tuple[int, str]]:
            sup.pump(0.1)
            return process_tree(child.pgid)

        _, tree = poll(pumped_tree, lambda tree: len(tree) >= 2, timeout=20, interval=0)
        assert len(tree) == 2, tree
        started = time.monotonic()
        sup.stop()
        assert time.monotonic() - started < 5
        assert not [pid for pid, (start, _) in tree.items() if _running(pid, start)]
    finally:
        sup.close()
    out = capfd.readouterr().out
    assert "stubborn | up" in out and "[run] stubborn did not stop in time: killing it" in out


class _TerminalReader:
    """Reads what the supervisor writes to its terminal, until told to stop."""

    def __init__(self, master: int) -> None:
        self.master, self.data, self._stop = master, bytearray(), threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                self.data += chunk

    def text(self) -> str:
        return self.data.decode(errors="replace").replace("\r\n", "\n")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _take_terminal() -> None:
    """``preexec_fn``: stdin (the pty) becomes the new session's controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.slow
def test_closing_its_terminal_stops_everything_and_it_listens_on_loopback(make_env):
    """(a) and (e): on a terminal of its own, with the default addresses."""
    run = make_env()
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT)],
        cwd=REPO,
        env=run.env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=_take_terminal,
    )
    os.close(slave)
    terminal = _TerminalReader(master)
    try:
        wait_ready(run, proc, terminal.text)
        tree = full_tree(proc.pid, run)
        text = terminal.text()
        for url in (
            f"http://127.0.0.1:{run.api_port}/",
            f"http://127.0.0.1:{run.api_port}/docs",
            f"http://127.0.0.1:{run.flower_port}/",
        ):
            assert url in text, text[-3000:]
        # Bound to loopback only: the listening sockets, and another address refuses.
        assert listening(run.api_port) == {"127.0.0.1"}
        assert listening(run.flower_port) == {"127.0.0.1"}
        if (other := other_local_address()) is not None:
            for port in (run.api_port, run.flower_port):
                with pytest.raises(OSError), socket.create_connection((other, port), timeout=2):
                    pass
    finally:
        terminal.stop()
        os.close(master)  # the terminal goes away: the kernel sends SIGHUP
    wait_gone(tree, run.tag, STOP_BOUND_S)
    assert proc.wait(5) == 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_make_alone_stops_everything(make_env, tmp_path, sig):
    """(b): ``make run``, and a signal to the make process only (not its group)."""
    if shutil.which("make") is None:
        pytest.skip("needs make")
    run = make_env()
    log = tmp_path / "make-run.log"
    make = start_make(run, log)
    try:
        wait_ready(run, make, log_reader(log))
        tree = full_tree(make.pid, run)
        supervisor = [pid for pid, (_, cmd) in tree.items() if cmd.endswith("scripts/devrun.py")]
        assert len(supervisor) == 1 and _stat(supervisor[0])[1] == make.pid, tree
        make.send_signal(sig)
        wait_gone(tree, run.tag, STOP_BOUND_S)
        make.wait(5)
    finally:
        with contextlib.suppress(OSError):
            os.killpg(make.pid, signal.SIGKILL)
    assert "stopping everything" in log.read_text(), log.read_text()[-3000:]


@pytest.mark.slow
def test_killed_supervisor_takes_its_children_and_private_databases(make_env, tmp_path):
    """(c): SIGKILL gives the supervisor no chance to clean up; with PostgreSQL and
    Redis of its own, whose processes (and the worker's pool) are not its children."""
    initdb = shutil.which("initdb") or next(Path("/usr/lib/postgresql").glob("*/bin/initdb"), None)
    if not (shutil.which("redis-server") and initdb):
        pytest.skip("needs PostgreSQL's initdb and redis-server installed")
    run = make_env(private=True)
    log = tmp_path / "run.log"
    proc = start_supervisor(run, log)
    try:
        wait_ready(run, proc, log_reader(log))
        tree = full_tree(proc.pid, run)
        commands = [cmd for _, cmd in tree.values()]
        assert any("redis-server" in cmd for cmd in commands), commands
        assert sum("postgres" in cmd.split(" ")[0] for cmd in commands) >= 2, commands
        proc.kill()
        wait_gone(tree, run.tag, KILL_BOUND_S)
    finally:
        proc.kill()
        proc.wait(5)
