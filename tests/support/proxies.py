"""HTTP faults for tests: :class:`FaultyProxy`, a small server in the test
process in front of a real API that answers, resets or forwards each request
as a rule says, and :class:`Hold`, a rule that holds a request in flight."""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime

import httpx


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


@dataclass
class Hold:
    """A :class:`FaultyProxy` rule: after :attr:`armed` is set, holds the first
    request for the test's days (December 2025) until :attr:`release` is set,
    then forwards it (real data)."""

    armed: threading.Event = field(default_factory=threading.Event)
    caught: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    path: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def rule(self, path: str, n: int):
        with self.lock:
            # Only the test's own days: beat's hourly job runs beside them.
            mine = self.armed.is_set() and not self.caught.is_set() and "start=2025-12-0" in path
            if mine:
                self.path = path
                self.caught.set()
        if mine:
            self.release.wait(30)
        return None  # then forward it: real data

    def hour(self) -> datetime:
        """The slice the held request was for."""
        return datetime.fromisoformat(self.path.split("start=", 1)[1].split("&", 1)[0])
