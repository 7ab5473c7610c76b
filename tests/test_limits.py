"""Bounded resources against clients that never finish: real uvicorn processes.

- Slow readers: hundreds of clients ask for 31 days of ``GET /data`` (about
  4.4 MB of JSON each) and never read. ``api.limits.DataBudget`` answers 503
  once ``API_DATA_BUDGET_BYTES`` of bodies are in flight and
  ``api.limits.SendGuard`` drops a client that takes nothing for
  ``API_SEND_TIMEOUT_S``; the API's memory stays bounded and ``/health``
  answers all along.
- Header drip: uvicorn alone keeps a connection that sends its headers a byte
  at a time open for ever (``--timeout-keep-alive`` does not cover it);
  ``python -m api.serve`` closes it after ``API_HEADER_TIMEOUT_S`` with a 408,
  and bounds open connections (``API_MAX_CONNECTIONS``) by closing the oldest
  one still waiting for its request.

Per the team's rule the tests assert behaviour (503s, closed connections) and
resource bounds (memory), and print the timings they see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import statistics
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from api.limits import (
    CHUNK_BYTES,
    DataBudget,
    SendGuard,
    estimate_data_bytes,
)
from api.seed_source import seed
from api.serve import HeadWithBody
from tests.support.databases import Databases
from tests.support.procs import Proc, Tracker, process_env, serve

MIB = 1024 * 1024
MONTH = "start=2025-11-20T00:00:00&end=2025-12-20T23:59:00"  # 31 days, all variables
RSS_BOUND_MIB = 512

# --- helpers -------------------------------------------------------------------


@pytest.fixture
def servers(current_dbs: Databases, procs: Tracker, tmp_path: Path) -> Callable[..., Proc]:
    """Start API processes on this test's databases: ``start(args, **env)``, once
    ``/health`` answers 200."""

    def start_one(args: list[str], **env: str) -> Proc:
        return procs.add(serve(f"api{len(procs) + 1}", args, process_env(**env), log_dir=tmp_path))

    return start_one


API_SERVE = ["-m", "api.serve"]
UVICORN = ["-m", "uvicorn", "api.main:app"]


def port_of(proc: Proc) -> int:
    return int(proc.url.rsplit(":", 1)[1])


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its children (uvicorn runs one process)."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for one in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


class Watch:
    """In a thread: the API's peak RSS, and ``/health`` asked every 50 ms."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.peak_mib = rss_mib(proc.pid)
        self.health: list[tuple[float, int | str]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._rss, daemon=True),
            threading.Thread(target=self._ask, daemon=True),
        ]

    def __enter__(self) -> Watch:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _rss(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, rss_mib(self.proc.pid))
            time.sleep(0.05)

    def _ask(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    status: int | str = client.get(f"{self.proc.url}/health").status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.health.append((time.monotonic() - began, status))
                time.sleep(0.05)

    def report(self) -> str:
        times = sorted(t for t, _ in self.health)
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        return (
            f"/health: {len(times)} answers, p50 {statistics.median(times) * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms; "
            f"peak RSS {self.peak_mib:.0f} MiB"
        )


def read_answer(sock: socket.socket, timeout: float = 10.0) -> tuple[int | None, int, int]:
    """Status, declared Content-Length and body bytes that arrived before the
    server closed the connection (or ``timeout`` passed)."""
    sock.setblocking(True)
    sock.settimeout(timeout)
    data = bytearray()
    with contextlib.suppress(OSError):  # a reset ends it as well as an EOF
        while chunk := sock.recv(1 << 20):
            data += chunk
            head, sep, body = bytes(data).partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
    head, sep, body = bytes(data).partition(b"\r\n\r\n")
    if not sep:
        return None, 0, 0
    status = int(head.split(b" ", 2)[1])
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return status, length, len(body)


# --- slow readers --------------------------------------------------------------


@pytest.mark.slow
def test_stalled_readers_are_refused_or_dropped_memory_stays_bounded(fresh_dbs: Databases, servers):
    # 31 whole days, as in the report: about 4.4 MB of JSON per answer.
    seed(fresh_dbs.source_url, start=date(2025, 11, 20), end=date(2025, 12, 20))
    send_timeout = 8
    api = servers(API_SERVE, API_SEND_TIMEOUT_S=str(send_timeout))
    size = len(httpx.get(f"{api.url}/data?{MONTH}", timeout=30).content)
    assert size > 4_000_000
    baseline = rss_mib(api.pid)
    request = f"GET /data?{MONTH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    stalled: list[socket.socket] = []
    try:
        with Watch(api) as watch:
            began = time.monotonic()
            for _ in range(400):
                sock = socket.socket()
                # A small window, so that the kernels hold as little of an answer as they can.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(("127.0.0.1", port_of(api)))
                sock.sendall(request)  # and never read
                stalled.append(sock)
            opened_s = time.monotonic() - began

            # While they hold the budget: another month is refused at once, with
            # Retry-After; an hour (what a worker asks) is served.
            refused = None
            for _ in range(50):
                answer = httpx.get(f"{api.url}/data?{MONTH}", timeout=30)
                if answer.status_code == 503:
                    refused = answer
                    break
                time.sleep(0.1)
            assert refused is not None, "a month was never refused beyond the budget"
            assert int(refused.headers["retry-after"]) > 0
            assert "try again" in refused.json()["detail"]
            hour = httpx.get(
                f"{api.url}/data",
                params={"start": "2025-12-05T00:00:00", "end": "2025-12-05T00:59:00"},
                timeout=30,
            )
            assert hour.status_code == 200 and len(hour.json()) == 60

            time.sleep(send_timeout + 2)  # the stalled ones are dropped by now
            during = watch.report()
        held_s = time.monotonic() - began

        outcomes = {"refused": 0, "cut off": 0, "whole": 0, "nothing": 0}
        for sock in stalled:
            status, length, got = read_answer(sock, timeout=5)
            if status == 503:
                outcomes["refused"] += 1
            elif status == 200 and got < length:
                outcomes["cut off"] += 1
            elif status == 200:
                outcomes["whole"] += 1
            else:
                outcomes["nothing"] += 1
    finally:
        for sock in stalled:
            sock.close()
    time.sleep(3)
    after = rss_mib(api.pid)
    print(
        f"\n400 stalled readers of {size / MIB:.1f} MiB each, opened in {opened_s:.1f} s, "
        f"held {held_s:.1f} s: {outcomes}\n{during}\n"
        f"RSS before {baseline:.0f} MiB, after they left {after:.0f} MiB"
    )

    assert watch.peak_mib < RSS_BOUND_MIB, during
    assert all(status == 200 for _, status in watch.health), watch.health
    # Every stalled reader was refused up front or answered; the answers that did
    # not fit in the kernels' buffers were cut off once the reader took nothing
    # for API_SEND_TIMEOUT_S (on this machine's TCP buffer sizes, all of them).
    assert outcomes["refused"] > 0 and outcomes["nothing"] == 0, outcomes
    if size > kernel_send_buffer_max() + 64 * 1024:
        assert outcomes["cut off"] > 0 and outcomes["whole"] == 0, outcomes
    # The memory is given back (or was never taken).
    assert after < baseline + 100, (baseline, after)
    assert httpx.get(f"{api.url}/data?{MONTH}", timeout=30).status_code == 200


def kernel_send_buffer_max() -> int:
    """The most a TCP socket's send buffer grows to here (net.ipv4.tcp_wmem)."""
    return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


# --- header drip -----------------------------------------------------------------


def drip_open(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that have sent the start of a request and a header
    that never ends."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: ")
        sock.setblocking(False)
        socks.append(sock)
    return socks


def drip(socks: list[socket.socket], closed: dict[int, tuple[float, bytes]], began: float) -> None:
    """One more byte on every open connection; record those the server closed,
    when, and the first bytes it sent."""
    for i, sock in enumerate(socks):
        if i in closed:
            continue
        try:
            answer = sock.recv(4096)
        except BlockingIOError:
            answer = None
        except OSError:
            answer = b""
        if answer is not None:
            closed[i] = (time.monotonic() - began, answer[:40])
            continue
        try:
            sock.send(b"a")
        except OSError:
            closed[i] = (time.monotonic() - began, b"")


def drip_for(
    socks: list[socket.socket],
    seconds: float,
    *,
    until_all_closed: bool = False,
    health_url: str | None = None,
) -> tuple[dict[int, tuple[float, bytes]], list]:
    closed: dict[int, tuple[float, bytes]] = {}
    health: list[tuple[float, int | str]] = []
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        drip(socks, closed, began)
        if until_all_closed and len(closed) == len(socks):
            break
        if health_url:
            asked = time.monotonic()
            try:
                status: int | str = httpx.get(health_url, timeout=5).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            health.append((time.monotonic() - asked, status))
        time.sleep(0.25)
    return closed, health


def test_uvicorn_alone_keeps_a_connection_dripping_its_headers_open(dbs, servers):
    """Why api.serve exists: uvicorn 0.54 has no limit on the time a request's
    headers take; --timeout-keep-alive applies only between requests."""
    api = servers([*UVICORN, "--timeout-keep-alive", "1"])
    socks = drip_open(port_of(api), 5)
    try:
        closed, _ = drip_for(socks, 4)
    finally:
        for sock in socks:
            sock.close()
    assert closed == {}, f"uvicorn closed dripping connections after all: {closed}"


@pytest.mark.slow
def test_api_serve_closes_connections_dripping_headers_and_health_answers(dbs, servers):
    timeout_s = 2
    api = servers(API_SERVE, API_HEADER_TIMEOUT_S=str(timeout_s))
    socks = drip_open(port_of(api), 500)
    try:
        closed, health = drip_for(
            socks, timeout_s + 20, until_all_closed=True, health_url=f"{api.url}/health"
        )
    finally:
        for sock in socks:
            sock.close()
    times = sorted(t for t, _ in closed.values())
    print(
        f"\n500 dripping connections with API_HEADER_TIMEOUT_S={timeout_s}: {len(closed)} "
        f"closed, first after {times[0]:.2f} s, last after {times[-1]:.2f} s; /health "
        f"answered {len(health)} times, slowest {max(t for t, _ in health) * 1000:.0f} ms"
    )
    assert len(closed) == len(socks)
    assert {answer[:30] for _, answer in closed.values()} == {b"HTTP/1.1 408 Request Timeout\r\n"}
    assert health and all(status == 200 for _, status in health), health
    # A request that arrives whole is unaffected, on a fresh connection or a kept-alive one.
    with httpx.Client(base_url=api.url, timeout=5) as client:
        assert [client.get("/health").status_code for _ in range(3)] == [200] * 3


def test_api_serve_closes_the_oldest_waiting_connection_beyond_the_bound(dbs, servers):
    bound = 50
    api = servers(API_SERVE, API_MAX_CONNECTIONS=str(bound), API_HEADER_TIMEOUT_S="60")
    socks = drip_open(port_of(api), 120)
    try:
        # Whole requests still get through: each closes the oldest dripper.
        assert httpx.get(f"{api.url}/health", timeout=5).status_code == 200
        closed, _ = drip_for(socks, 1.5)
    finally:
        for sock in socks:
            sock.close()
    print(f"\n120 dripping connections, API_MAX_CONNECTIONS={bound}: {len(closed)} closed")
    assert len(closed) >= 120 - bound
    # The oldest went first; the newest are still open.
    assert set(closed) == set(range(len(closed)))


def test_api_serve_refuses_a_request_head_over_its_bound(dbs, servers):
    api = servers(API_SERVE)
    with socket.create_connection(("127.0.0.1", port_of(api))) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 70_000)
        status, _, _ = read_answer(sock)
    assert status == 431
    assert httpx.get(f"{api.url}/health", timeout=5).status_code == 200


def _until_blank_line(sock: socket.socket) -> bytes:
    """Bytes up to and including the end of one response head."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed after {data!r}"
        data += chunk
    return data


def test_api_serve_answers_heads_bodies_and_interim_answers_on_one_connection(dbs, servers):
    """api.serve writes a response's head together with its body: a HEAD's head,
    which no body follows, and an interim 100 Continue still leave on time."""
    api = servers(API_SERVE)
    with socket.create_connection(("127.0.0.1", port_of(api))) as sock:
        sock.settimeout(10)
        sock.sendall(b"HEAD /health HTTP/1.1\r\nHost: api\r\n\r\n")
        head = _until_blank_line(sock)
        assert head.startswith(b"HTTP/1.1 405 ") and head.endswith(b"\r\n\r\n")

        sock.sendall(b"GET /health HTTP/1.1\r\nHost: api\r\n\r\n")
        answer = _until_blank_line(sock)
        head, _, body = answer.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 ") and json.loads(body)["status"] == "ok"

        sent = b'{"date": "not a date"}'
        sock.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: " + str(len(sent)).encode() + b"\r\n\r\n"
        )
        assert _until_blank_line(sock) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(sent)
        assert _until_blank_line(sock).startswith(b"HTTP/1.1 422 ")


def test_a_response_head_leaves_with_the_first_part_of_its_body():
    class Recorder:
        def __init__(self) -> None:
            self.writes: list[bytes] = []
            self.closed = False

        def write(self, data: bytes) -> None:
            self.writes.append(data)

        def close(self) -> None:
            self.closed = True

        def get_write_buffer_size(self) -> int:
            return 0

    transport = Recorder()
    held = HeadWithBody(transport)  # type: ignore[arg-type]
    held.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # interim: at once
    held.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    held.write(b"body")
    held.write(b"more")
    assert transport.writes[1:] == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody", b"more"]
    assert held.get_write_buffer_size() == 0  # everything else is the transport's own

    transport = Recorder()
    held = HeadWithBody(transport)  # type: ignore[arg-type]
    held.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")  # a HEAD's: no body follows
    held.flush()
    held.flush()
    assert transport.writes == [b"HTTP/1.1 405 Method Not Allowed\r\n\r\n"]
    held.write(b"HTTP/1.1 200 OK\r\n\r\n")
    held.close()
    assert transport.writes[1:] == [b"HTTP/1.1 200 OK\r\n\r\n"] and transport.closed


# --- the middleware alone, in process --------------------------------------------------


def test_the_estimate_bounds_the_real_body_from_above(client):
    # Ranges the source fills: the estimate is above the body, and not far.
    for query in (
        "start=2025-12-05T00:00:00",
        "start=2025-12-05T00:00:00&end=2025-12-05T00:59:00&variables=power",
        "start=2025-12-05T00:00:00%2B02:00&variables=power&variables=wind_speed",
    ):
        real = len(client.get(f"/data?{query}").content)
        estimate = estimate_data_bytes(query.encode(), 31)
        assert real <= estimate <= 2 * real, (query, real, estimate)
    # The source holds 10 of these 31 days: one row a minute is an upper bound.
    assert len(client.get(f"/data?{MONTH}").content) < estimate_data_bytes(MONTH.encode(), 31)
    # What the endpoint will refuse counts as the most it could cost.
    most = estimate_data_bytes(b"start=2025-12-05&end=2026-12-05", 31)
    assert estimate_data_bytes(b"start=garbage", 31) == most
    assert estimate_data_bytes(b"", 31) == most


def body_app(size: int, release: asyncio.Event | None = None):
    """An ASGI app answering ``size`` bytes, after ``release`` if given."""

    async def app(scope, receive, send):
        if release is not None:
            await release.wait()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(size).encode())],
            }
        )
        await send({"type": "http.response.body", "body": b"x" * size})

    return app


def test_the_budget_refuses_a_large_read_at_once_and_serves_small_ones():
    async def scenario():
        release = asyncio.Event()
        budget = DataBudget(body_app(5 * MIB, release), budget=8 * MIB, max_days=31)
        sent: dict[str, list] = {"first": [], "second": [], "hour": []}

        def call(name: str, query: bytes):
            scope = {
                "type": "http",
                "method": "GET",
                "path": "/data",
                "query_string": query,
                "headers": [],
            }

            async def send(message):
                sent[name].append(message)

            return budget(scope, None, send)

        first = asyncio.create_task(call("first", MONTH.encode()))
        await asyncio.sleep(0)
        assert budget.in_flight > 0
        await call("second", MONTH.encode())  # over the budget: refused before the app runs
        hour = asyncio.create_task(
            call("hour", b"start=2025-12-05T00:00:00&end=2025-12-05T00:59:00")
        )
        release.set()
        await asyncio.gather(first, hour)
        return budget, sent

    budget, sent = asyncio.run(scenario())
    assert sent["first"][0]["status"] == 200
    refused = sent["second"][0]
    assert refused["status"] == 503 and (b"retry-after", b"5") in refused["headers"]
    assert sent["hour"][0]["status"] == 200
    assert budget.in_flight == 0 and budget.refused == 1


def test_the_guard_sends_in_pieces_and_drops_a_client_that_takes_none():
    class Transport:
        aborted = False

        def abort(self):
            self.aborted = True

    class Server:
        """Stands for uvicorn's request cycle: takes two pieces, then no more."""

        def __init__(self):
            self.transport = Transport()
            self.pieces: list[int] = []

        async def send(self, message):
            if message["type"] == "http.response.body":
                if len(self.pieces) == 2:
                    await asyncio.sleep(3600)  # a client that stopped reading
                self.pieces.append(len(message["body"]))

    server = Server()
    guard = SendGuard(body_app(10 * CHUNK_BYTES), timeout=0.2)
    asyncio.run(guard({"type": "http", "client": ("127.0.0.1", 1)}, None, server.send))
    assert server.pieces == [CHUNK_BYTES, CHUNK_BYTES]
    assert server.transport.aborted and guard.dropped == 1

    reader = SimpleNamespace(pieces=[])

    async def reads(message):
        if message["type"] == "http.response.body":
            reader.pieces.append((len(message["body"]), message["more_body"]))

    asyncio.run(SendGuard(body_app(2 * CHUNK_BYTES + 1), timeout=1)({"type": "http"}, None, reads))
    assert reader.pieces == [(CHUNK_BYTES, True), (CHUNK_BYTES, True), (1, False)]


def test_settings_have_safe_defaults(settings_env):
    from windfarm.config import get_settings

    settings = get_settings()
    assert settings.allowed_hosts == ()
    assert settings.api_data_budget_bytes == 64 * MIB
    assert settings.api_send_timeout_s == 30
    assert settings.api_header_timeout_s == 10
    assert settings.api_max_connections == 1000
    settings_env(ALLOWED_HOSTS=" api.example , *.example.org,")
    assert get_settings().allowed_hosts == ("api.example", "*.example.org")
    assert json.dumps(get_settings().allowed_hosts)  # plain strings
