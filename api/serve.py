"""Run the API with the connection limits only the server can apply.

    python -m api.serve --host 0.0.0.0 --port 8000

is ``uvicorn api.main:app`` (which still works, without these limits) with
uvicorn's HTTP protocol extended by :class:`GuardedHttpToolsProtocol`:

- a request must be all there, headers and body, within
  ``API_HEADER_TIMEOUT_S`` of the connection opening (or of the request's first
  byte on a kept-alive connection); else 408 and the connection is closed.
  uvicorn 0.54 has no such limit: ``--timeout-keep-alive`` covers only the wait
  *between* requests, so a client dripping its headers a byte at a time holds
  its connection for ever (``tests/test_limits.py`` shows it);
- request line and headers of at most ``MAX_HEAD_BYTES`` (431 beyond; httptools
  itself sets no bound);
- at most ``API_MAX_CONNECTIONS`` open connections: a new one beyond them
  closes the oldest connection that is idle or still waiting for its request,
  or, when every one is busy answering, is itself refused with 503. Drippers
  thus cannot lock out the clients that send a whole request at once;
- idle keep-alive connections close after ``API_KEEP_ALIVE_S``; no WebSocket
  upgrades (the API has none).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.limits import Tally
from api.security import HEADERS as SECURITY_HEADERS
from windfarm.config import get_settings
from windfarm.logs import access_line_wanted

log = logging.getLogger("uvicorn.error")
LATE = Tally(log)
CROWDED = Tally(log)

MAX_HEAD_BYTES = 64 * 1024


def _answer(status: str, detail: str, *extra: str) -> bytes:
    """A whole response the protocol writes itself, with the API's security headers."""
    body = detail.encode()
    hardening = [f"{name.decode()}: {value.decode()}" for name, value in SECURITY_HEADERS]
    head = [
        f"HTTP/1.1 {status}",
        "content-type: text/plain; charset=utf-8",
        f"content-length: {len(body)}",
        *hardening,
        *extra,
        "connection: close",
        "",
        "",
    ]
    return "\r\n".join(head).encode() + body


TIMED_OUT = _answer("408 Request Timeout", "the request did not arrive in time")
TOO_LARGE = _answer("431 Request Header Fields Too Large", "the request's headers are too large")
BUSY = _answer(
    "503 Service Unavailable", "too many connections; try again shortly", "retry-after: 1"
)


class AccessLog:
    """uvicorn's access logger as the protocol hands it to each request: a line
    that ``windfarm.logs`` would drop (an answer below 400, above DEBUG) is not
    made into a record first. Making it was a twentieth of the API's CPU for
    an hour of ``GET /data``."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def info(self, msg: str, *args: object) -> None:
        if access_line_wanted(args[-1] if args else None):
            self.logger.info(msg, *args, stacklevel=2)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.logger, name)


class HeadWithBody:
    """The transport as one request's cycle sees it: the response's head waits
    for the first part of its body, and both leave in one write (one system
    call, one segment for the client to read) instead of two. The head is sent
    alone when no body follows (a HEAD request) once the response is complete,
    and before the connection closes."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self.head is not None:
            data, self.head = self.head + data, None
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 100 "):
            self.head = data  # the status line and headers: the body comes next
            return
        self.transport.write(data)

    def flush(self) -> None:
        if self.head is not None:
            head, self.head = self.head, None
            self.transport.write(head)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request timeout, a bound on the
    request head and a bound on open connections (see the module's doc)."""

    header_timeout_s: float = 10.0
    max_connections: int = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access_logger = AccessLog(self.access_logger)  # type: ignore[assignment]
        self._request_timer: asyncio.TimerHandle | None = None
        # Since when this connection waits for a request (None: it is answering one).
        self.waiting_since: float | None = None
        self._head_bytes = 0

    # -- connections

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect_request()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.waiting_since = None
        super().connection_lost(exc)

    def _make_room(self) -> None:
        """Close the connection that has waited longest for its request; if every
        other one is answering a request, refuse this one."""
        waiting = [
            c
            for c in self.connections
            if isinstance(c, GuardedHttpToolsProtocol)
            and c is not self
            and c.waiting_since is not None
        ]
        if waiting:
            min(waiting, key=lambda c: c.waiting_since or 0.0).drop()
            CROWDED.add(
                f"over {self.max_connections} connections: closed the one that waited "
                "longest for its request"
            )
        else:
            self._close_with(BUSY)
            CROWDED.add(f"over {self.max_connections} connections, all busy: refused a new one")

    def drop(self) -> None:
        self._cancel_timer()
        self.waiting_since = None
        self.transport.abort()

    # -- the request's arrival

    def _expect_request(self) -> None:
        if self.waiting_since is None:
            self.waiting_since = time.monotonic()
        if self._request_timer is None:
            self._request_timer = self.loop.call_later(self.header_timeout_s, self._too_late)

    def _cancel_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _too_late(self) -> None:
        self._request_timer = None
        if self.transport.is_closing():
            return
        LATE.add(f"closed a connection whose request was not in after {self.header_timeout_s:g} s")
        if self.cycle is not None and self.cycle.response_started:
            self.transport.abort()  # a response is on its way: no room for another
        else:
            self._close_with(TIMED_OUT)

    def _close_with(self, answer: bytes) -> None:
        self._cancel_timer()
        self.waiting_since = None
        self.transport.write(answer)
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # the client does not read: do not wait for it
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.waiting_since is not None:  # the bytes of a request head, so far
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                if not self.transport.is_closing():
                    self._close_with(TOO_LARGE)
                return
        super().data_received(data)

    # -- parser callbacks (httptools calls them while uvicorn feeds it data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._expect_request()

    def on_headers_complete(self) -> None:
        self.waiting_since = None
        self._head_bytes = 0
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = HeadWithBody(self.transport)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._cancel_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self.cycle is not None and isinstance(self.cycle.transport, HeadWithBody):
            self.cycle.transport.flush()
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self.waiting_since = time.monotonic()  # idle until the next request


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[HttpToolsProtocol]:
    """:class:`GuardedHttpToolsProtocol` with these limits."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout_s": header_timeout_s, "max_connections": max_connections},
    )


class ConfiguredProtocol(GuardedHttpToolsProtocol):
    """:class:`GuardedHttpToolsProtocol` with the limits of the settings. A class
    of the module (not made in a function), so that ``--workers`` processes,
    which uvicorn spawns, can import it."""

    header_timeout_s = get_settings().api_header_timeout_s
    max_connections = get_settings().api_max_connections


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m api.serve",
        description="Run the windfarm-etl API under uvicorn with its connection limits "
        "(API_HEADER_TIMEOUT_S, API_MAX_CONNECTIONS, API_KEEP_ALIVE_S).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
    )
    parser.add_argument("--root-path", default="", help="the path prefix of a proxy in front")
    parser.add_argument(
        "--forwarded-allow-ips",
        default=None,
        help="proxies whose X-Forwarded-* headers are trusted (uvicorn's option)",
    )
    parser.add_argument(
        "--timeout-graceful-shutdown",
        type=int,
        default=None,
        help="seconds requests in progress get to finish at shutdown",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WEB_CONCURRENCY", "1")),
        help="server processes (default: $WEB_CONCURRENCY or 1)",
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    uvicorn.run(
        "api.main:app",
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        root_path=args.root_path,
        forwarded_allow_ips=args.forwarded_allow_ips,
        http=ConfiguredProtocol,
        workers=args.workers,
        ws="none",
        timeout_keep_alive=settings.api_keep_alive_s,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
    )


if __name__ == "__main__":
    main()
