"""Request size limits, checked before any endpoint reads the request.

The API's only body is ``POST /jobs``'s few dozen bytes of JSON and its
longest honest query string is a few hundred bytes, so anything far larger is
refused at once with a clear answer instead of being read, parsed or logged:
413 for a body over ``MAX_BODY_BYTES`` (by ``Content-Length`` or counted as it
arrives), 414 for a query string over ``MAX_QUERY_BYTES``.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
            await _refuse(414, f"the query string is longer than {self.max_query} bytes",
                          scope, receive, send)
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
        await _refuse(413, f"the request body is larger than {self.max_body} bytes",
                      scope, receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


async def _refuse(status: int, detail: str, scope: Scope, receive: Receive, send: Send) -> None:
    # Connection: close, so the client's unread body cannot be taken for the next request.
    response = JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})
    await response(scope, receive, send)
