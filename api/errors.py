"""Error bodies a person can read.

Every 4xx answer of the API is ``{"detail": "<one sentence>"}``; validation
failures add ``errors``, one entry per problem, for programs. 5xx answers say
as little: a database that does not answer is a 503 (retry later), anything
else a 500 ``internal error``. Neither ever carries SQL, a stack trace or a
connection string; the server's log has the particulars.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal error"
DATABASE_UNAVAILABLE = "a database the service needs is not answering; try again later"
RETRY_AFTER_S = 5

DATETIME_HINT = "an ISO 8601 date-time such as 2025-12-05T00:00:00"
DATE_HINT = "an ISO 8601 date such as 2025-12-05"


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    detail: str
    errors: list[FieldError] | None = None


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries that document ``codes`` with the :class:`Problem` body."""
    return {code: {"model": Problem} for code in codes}


def json_example(example: Any) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entry of a 200 whose JSON body is built by PostgreSQL (so no
    response model): an example of it."""
    return {200: {"content": {"application/json": {"example": example}}}}


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("query", "body", "path", "header")]
    return ".".join(parts) or "request"


def _sentence(errors: list[FieldError]) -> str:
    return "; ".join(
        e.message if e.field == "request" else f"{e.field} {e.message}" for e in errors
    )


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _message(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    given = _show(error.get("input"))
    if kind == "missing":
        return "is required"
    if kind.startswith("datetime"):
        return f"{given} is not {DATETIME_HINT}"
    if kind.startswith("date"):
        return f"{given} is not {DATE_HINT}"
    if kind == "enum":
        expected = error.get("ctx", {}).get("expected", "")
        return f"{given} is not one of {expected}"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind == "value_error":
        return str(error.get("msg", "")).removeprefix("Value error, ")
    return str(error.get("msg", "is invalid"))


def describe(exc: RequestValidationError) -> Problem:
    errors = [FieldError(field=_field(e.get("loc", ())), message=_message(e)) for e in exc.errors()]
    return Problem(detail=_sentence(errors) or "invalid request", errors=errors)


async def validation_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content=describe(exc).model_dump(exclude_none=True))


def _first_line(exc: BaseException) -> str:
    """The exception's type and the driver's first line: no SQL, no parameters."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:300]}" if lines else type(cause).__name__


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means a database is down or dropped the connection."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


async def database_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """503 while a database does not answer; 500 for any other SQLAlchemy error."""
    if not database_unavailable(exc):
        log.error("%s %s: database error", request.method, request.url.path, exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": INTERNAL_ERROR})
    log.warning("%s %s: %s", request.method, request.url.path, _first_line(exc))
    return JSONResponse(
        status_code=503,
        content={"detail": DATABASE_UNAVAILABLE},
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def internal_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """500 with a generic body; the server logs the traceback (Starlette re-raises)."""
    log.error("%s %s: unhandled %s", request.method, request.url.path, type(exc).__name__)
    return JSONResponse(status_code=500, content={"detail": INTERNAL_ERROR})
