"""Bounds on what one request may cost the API.

- :class:`RequestLimits`, checked before any endpoint reads the request. The
  API's only body is ``POST /jobs``'s few dozen bytes of JSON and its longest
  honest query string is a few hundred bytes, so anything far larger is
  refused at once with a clear answer instead of being read, parsed or logged:
  413 for a body over ``MAX_BODY_BYTES`` (by ``Content-Length`` or counted as
  it arrives), 414 for a query string over ``MAX_QUERY_BYTES``.
- :class:`DataBudget`: the bytes of ``GET /data`` answers the API holds at
  once (``API_DATA_BUDGET_BYTES``). A request is counted from before its query
  (by an upper estimate from its range) until its body has been handed to the
  connection; one that does not fit gets 503 with ``Retry-After`` at once,
  before any query. Ranges over a sixteenth of the budget may fill at most
  three quarters of it, so small reads (a worker's hour, the dashboard's day)
  go on while clients that never read hold the rest.
- :class:`SendGuard`: hands a body to the server in pieces of ``CHUNK_BYTES``,
  waiting for each to be taken, and drops a client that takes none for
  ``API_SEND_TIMEOUT_S``. Without it a client that never reads would keep its
  whole answer in the server's write buffer for as long as it stays connected.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from datetime import datetime, time, timedelta
from time import monotonic
from urllib.parse import parse_qsl

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from windfarm.timeutil import to_utc
from windfarm.vocabulary import VARIABLES

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4096
MAX_QUERY_BYTES = 4096


class RequestLimits:
    """ASGI middleware refusing oversized bodies (413) and query strings (414)."""

    def __init__(
        self, app: ASGIApp, *, max_body: int = MAX_BODY_BYTES, max_query: int = MAX_QUERY_BYTES
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.max_query = max_query

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("query_string", b"")) > self.max_query:
            await _refuse(
                414, f"the query string is longer than {self.max_query} bytes", scope, receive, send
            )
            return
        headers = dict(scope.get("headers", ()))
        declared = headers.get(b"content-length")
        if declared is not None:
            # The server holds a body to its declared length, so the header says it all.
            if not declared.strip().isdigit():
                await _refuse(400, "Content-Length is not a number", scope, receive, send)
            elif int(declared) > self.max_body:
                await self._too_large(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if b"transfer-encoding" not in headers:  # no body at all: nothing to count
            await self.app(scope, receive, send)
            return
        body = await self._read_body(receive)  # chunked: count it as it arrives
        if body is None:
            await self._too_large(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, receive: Receive) -> list[Message] | None:
        """The request's body messages, or None once they add up to too many bytes."""
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages  # the client went away; the app sees that too
            size += len(message.get("body", b""))
            if size > self.max_body:
                return None
            if not message.get("more_body", False):
                return messages

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _refuse(
            413, f"the request body is larger than {self.max_body} bytes", scope, receive, send
        )


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


async def _refuse(status: int, detail: str, scope: Scope, receive: Receive, send: Send) -> None:
    # Connection: close, so the client's unread body cannot be taken for the next request.
    response = JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})
    await response(scope, receive, send)


# --- GET /data: a budget of response bytes ------------------------------------

DATA_PATH = "/data"
CHUNK_BYTES = 64 * 1024
BUSY_RETRY_AFTER_S = 5
# Bytes of one row of GET /data's JSON, a little above the largest seen: the
# timestamp and punctuation, then each variable's name and a value of up to
# 17 significant digits.
ROW_BYTES = 40
VALUE_BYTES = 40


def estimate_data_bytes(query_string: bytes, max_days: int) -> int:
    """An upper estimate of the body ``GET /data?query_string`` answers: one row
    a minute of its range. A query the endpoint will refuse counts as the
    largest range; it is answered before it takes any of the budget anyway."""
    most = (max_days * 24 * 60 + 1) * (ROW_BYTES + VALUE_BYTES * len(VARIABLES))
    try:
        params = parse_qsl(query_string.decode("latin-1"))
        values = dict(params)
        start = to_utc(datetime.fromisoformat(values["start"]))
        end = (
            datetime.combine(start.date(), time.max)
            if not values.get("end")
            else to_utc(datetime.fromisoformat(values["end"]))
        )
    except (KeyError, ValueError, OverflowError):
        return most
    wanted = {value for name, value in params if name == "variables"} & set(VARIABLES)
    minutes = (
        min(max(end - start, timedelta(0)), timedelta(days=max_days)) // timedelta(minutes=1)
    ) + 1
    return min(most, minutes * (ROW_BYTES + VALUE_BYTES * (len(wanted) or len(VARIABLES))))


class DataBudget:
    """ASGI middleware: at most ``budget`` bytes of ``GET /data`` bodies in flight
    (see the module's doc); beyond it, 503 with ``Retry-After`` before querying."""

    def __init__(self, app: ASGIApp, *, budget: int, max_days: int) -> None:
        self.app = app
        self.budget = budget
        self.max_days = max_days
        self.in_flight = 0  # bytes counted now; one event loop, so no lock
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or _route_path(scope) != DATA_PATH
            or scope["method"] not in ("GET", "HEAD")
        ):
            await self.app(scope, receive, send)
            return
        held = estimate_data_bytes(scope.get("query_string", b""), self.max_days)
        limit = self.budget if held <= self.budget // 16 else self.budget * 3 // 4
        if self.in_flight and self.in_flight + held > limit:
            self.refused += 1
            await _busy(scope, receive, send)
            return
        self.in_flight += held

        async def counted_send(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                declared = dict(message.get("headers", ())).get(b"content-length")
                if declared is not None and declared.isdigit():
                    # The real size from now on, instead of the estimate.
                    self.in_flight += int(declared) - held
                    held = int(declared)
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.in_flight -= held  # handed to the connection: no longer ours
                held = 0

        try:
            await self.app(scope, receive, counted_send)
        finally:
            self.in_flight -= held


def _route_path(scope: Scope) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _busy(scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse(
        {"detail": "the API is sending as much data as it holds at once; try again shortly"},
        status_code=503,
        headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
    )
    await response(scope, receive, send)


# --- Slow readers --------------------------------------------------------------


class Tally:
    """Counts an event and logs it at most once per ``every_s`` seconds, so that
    a flood of bad clients cannot flood the log too."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self.count = 0
        self._last = -every_s

    def add(self, message: str) -> None:
        self.count += 1
        now = monotonic()
        if now - self._last >= self.every_s:
            self.logger.warning("%s (%d since the last such line)", message, self.count)
            self.count = 0
            self._last = now


DROPPED = Tally(log)


class SendGuard:
    """ASGI middleware, outermost: bodies go out in pieces of ``chunk`` bytes, and
    a client that takes no piece for ``timeout`` seconds is disconnected."""

    def __init__(self, app: ASGIApp, *, timeout: float, chunk: int = CHUNK_BYTES) -> None:
        self.app = app
        self.timeout = timeout
        self.chunk = chunk
        self.dropped = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gone = False

        async def timed(message: Message) -> None:
            nonlocal gone
            try:
                async with asyncio.timeout(self.timeout):
                    await send(message)
            except TimeoutError:
                gone = True
                self.dropped += 1
                DROPPED.add(
                    f"dropped {_client(scope)}: it took no part of its answer "
                    f"for {self.timeout:g} s"
                )
                if not await _abort(send):
                    raise

        async def guarded_send(message: Message) -> None:
            if gone:
                return  # the client is gone: the rest of the answer goes nowhere
            body = message.get("body", b"")
            if message["type"] != "http.response.body" or len(body) <= self.chunk:
                await timed(message)
                return
            more = message.get("more_body", False)
            view = memoryview(body)
            for at in range(0, len(body), self.chunk):
                last = at + self.chunk >= len(body)
                await timed(
                    {
                        "type": "http.response.body",
                        "body": bytes(view[at : at + self.chunk]),
                        "more_body": more or not last,
                    }
                )
                if gone:
                    return

        await self.app(scope, receive, guarded_send)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "a client"


async def _abort(send: Send) -> bool:
    """Close the connection under ``send`` at once, discarding what it still
    buffers; False where the server does not show its transport (uvicorn's
    ``send`` is a method of the request's cycle, which holds it)."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    abort = getattr(transport, "abort", None)  # asyncio's or uvloop's transport
    if not callable(abort):
        return False
    abort()
    await asyncio.sleep(0)  # the server learns of it before the app returns
    return True


# --- Memory given back ------------------------------------------------------------

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def return_freed_memory() -> bool:
    """Have glibc map every allocation of 128 KiB or more on its own, so that a
    large body's memory goes back to the system when it is freed. (glibc
    otherwise raises this threshold after freeing a large block, and the next
    bodies stay in heaps that never shrink: the process keeps its peak size.)
    False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 128 * 1024)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 256 * 1024)
    )
