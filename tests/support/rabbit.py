"""A private RabbitMQ node for tests, beside the machine's own.

:class:`PrivateRabbit` runs ``rabbitmq-server`` as a node of the test's own:
its own node name, AMQP port, Erlang distribution port, Erlang cookie, data
and log directories (all under a temporary directory) and no plugins, so it
takes no port of the shared server (the management plugin's included) and a
test may stop and restart it freely. Other users of the machine's RabbitMQ
never see it: only epmd, the host's registry of Erlang node names, is shared,
and the node registers a name of its own there.

What it took, found on RabbitMQ 3.10 / Erlang 25 running as root:

- the scripts in ``/usr/lib/rabbitmq/bin`` are called directly: the
  ``/usr/sbin`` wrappers ``su`` to the ``rabbitmq`` user when run as root,
  which could not write the test's directories (and loses the environment);
- ``HOME`` points at a directory holding the node's ``.erlang.cookie``
  (mode 0400): the server and ``rabbitmqctl`` authenticate with it, so the
  CLI must get the same environment;
- ``RABBITMQ_CONF_ENV_FILE`` and ``RABBITMQ_CONFIG_FILE`` point at files of
  the node's own: the system's ``/etc/rabbitmq/rabbitmq-env.conf`` names the
  shared node (``NODENAME``) and its ``rabbitmq.conf`` its listener (5672);
- ``rabbitmqctl await_startup`` fails at once while the node has not yet
  registered with epmd, so it is asked again until it answers or the server
  has exited.

Messages of durable queues sent persistent (Celery's default) survive a
clean :meth:`PrivateRabbit.restart`: the data directory is kept.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

from kombu import Connection
from kombu.exceptions import ChannelError

from tests.support.procs import free_port

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def _script(name: str) -> str:
    """The RabbitMQ script ``name``: the real one, not the ``su`` wrapper, where it exists."""
    direct = RABBIT_BIN / name
    if direct.exists():
        return str(direct)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise RuntimeError(f"{name} is not installed")
    return found


def available() -> bool:
    """Whether RabbitMQ's server and CLI are installed on this machine."""
    try:
        _script("rabbitmq-server")
        _script("rabbitmqctl")
    except RuntimeError:
        return False
    return True


class PrivateRabbit:
    """A RabbitMQ node of the test's own; :meth:`url` is the broker URL of a vhost."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="wf-rabbit-"))
        self.node = f"wf-{uuid.uuid4().hex[:12]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.log_path = self.dir / "server.log"
        self.popen: subprocess.Popen | None = None
        self.start_seconds: list[float] = []  # how long each start took
        home = self.dir / "home"
        home.mkdir()
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o400)
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{self.port}\n")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbit.pid"),
            # The distribution port on the loopback only, as the shared node's.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    # --- the broker ------------------------------------------------------------------

    def url(self, vhost: str = "/") -> str:
        """The ``amqp://`` URL of ``vhost`` on this node (guest may use it from here)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{urllib.parse.quote(vhost, safe='')}"

    def start(self, timeout: float = START_TIMEOUT_S) -> float:
        """Start the node and wait until it has booted; the seconds it took."""
        if self.alive():
            return 0.0
        began = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [_script("rabbitmq-server")],
                env=self.env,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = began + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.alive():
                self.kill()
                raise RuntimeError(f"RabbitMQ node {self.node} did not start\n{self.describe()}")
            answer = self.ctl(
                "await_startup", "--timeout", str(max(1, int(left))), check=False, timeout=left + 10
            )
            if answer.returncode == 0:
                break
            time.sleep(0.2)  # not registered yet: ask again
        took = time.monotonic() - began
        self.start_seconds.append(took)
        return took

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """A clean shutdown (``rabbitmqctl stop``); the data directory stays."""
        if not self.alive():
            self.popen = None
            return
        self.ctl("stop", check=False, timeout=timeout)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.popen = None

    def restart(self, down_for: float = 0.0) -> float:
        """Stop the node, wait ``down_for`` seconds, start it again; the start's seconds."""
        self.stop()
        time.sleep(down_for)
        return self.start()

    def kill(self) -> None:
        """SIGKILL the node's process group (the one this object started)."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(10)
        self.popen = None

    def close(self) -> None:
        """Stop the node and delete its directory."""
        try:
            self.stop()
        finally:
            self.kill()
            shutil.rmtree(self.dir, ignore_errors=True)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    # --- administration -----------------------------------------------------------------

    def ctl(
        self, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess:
        """``rabbitmqctl -n NODE args...`` with the node's environment (its cookie)."""
        done = subprocess.run(
            [_script("rabbitmqctl"), "-n", self.node, *args],
            env=self.env,
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)}: rc {done.returncode}\n{done.stdout}{done.stderr}"
            )
        return done

    def queues(self, vhost: str = "/") -> dict[str, tuple[int, int]]:
        """Queue name -> (messages ready, messages unacknowledged), as the node counts them."""
        out = self.ctl(
            "list_queues",
            "-p",
            vhost,
            "--quiet",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ).stdout
        counts = {}
        for line in out.splitlines():
            if line.strip():
                name, ready, unacked = line.rsplit(maxsplit=2)
                counts[name] = (int(ready), int(unacked))
        return counts

    def ready(self, queue: str, vhost: str = "/") -> int | None:
        """Messages ready in ``queue``, asked over AMQP (milliseconds, where
        :meth:`queues` takes a CLI start); None when the queue does not exist."""
        with Connection(self.url(vhost), connect_timeout=5) as conn:
            try:
                return conn.default_channel.queue_declare(queue=queue, passive=True).message_count
            except ChannelError as exc:
                if getattr(exc, "code", None) == 404:
                    return None
                raise

    def purge(self, queue: str, vhost: str = "/") -> None:
        """Drop every ready message of ``queue`` (unacknowledged ones stay)."""
        self.ctl("purge_queue", "-p", vhost, queue)

    def describe(self) -> str:
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- RabbitMQ {self.node} (port {self.port}) log tail ---\n{log[-4000:]}"
