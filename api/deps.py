"""Request dependencies: database connections and the token check.

Each yields its connection back to the pool when the request's response has
been sent. No route that has background tasks uses them: ``POST /jobs`` takes
its connection itself and gives it back before sending (see
``windfarm.dispatch.submit_job``), so no request ever holds a pooled
connection while something it started waits for another.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from windfarm.config import get_settings
from windfarm.db import source_reader, target_engine

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="API_TOKEN, when the service has one")


def get_target() -> Iterator[Connection]:
    """A target connection whose transaction commits when the request succeeds."""
    with target_engine().begin() as conn:
        yield conn


def get_source() -> Iterator[Connection]:
    """A source connection for reads, each its own round trip (autocommit)."""
    with source_reader().connect() as conn:
        yield conn


def get_source_if_up() -> Iterator[Connection | None]:
    """Like :func:`get_source`, or None while the source does not answer."""
    try:
        conn = source_reader().connect()
    except DBAPIError as exc:
        log.warning("source database unreachable: %s", type(exc).__name__)
        yield None
        return
    with conn:
        yield conn


def require_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """Refuse the request unless it carries the configured API token."""
    expected = get_settings().api_token
    if expected is None:
        return
    given = credentials.credentials if credentials else ""
    # compare_digest takes as long whatever the first differing byte is.
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            401,
            "this endpoint needs 'Authorization: Bearer <API_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


TargetConn = Annotated[Connection, Depends(get_target)]
SourceConn = Annotated[Connection, Depends(get_source)]
SourceConnIfUp = Annotated[Connection | None, Depends(get_source_if_up)]
Authorized = Depends(require_token)
