"""Request dependencies: the databases and the token check.

- :data:`TargetConn` yields a target connection back to the pool when the
  request's response has been sent. No route that has background tasks uses
  it: ``POST /jobs`` takes its connection itself and gives it back before
  sending (see ``windfarm.dispatch.submit_job``), so no request ever holds a
  pooled connection while something it started waits for another.
- :data:`SourceDb` is the source's engine; a route reads it with
  ``windfarm.db.read_with_retry`` in the thread it runs in. A connection
  yielded by a dependency costs two more trips to the thread pool (to check
  it out, to give it back), a third of ``GET /data``'s CPU for an hour.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection, Engine

from windfarm.config import get_settings
from windfarm.db import source_reader, target_engine

_bearer = HTTPBearer(auto_error=False, description="API_TOKEN, when the service has one")


def get_target() -> Iterator[Connection]:
    """A target connection whose transaction commits when the request succeeds."""
    with target_engine().begin() as conn:
        yield conn


async def get_source() -> Engine:
    """The source's engine for reads (autocommit). A coroutine, so that FastAPI
    resolves it in the event loop instead of the thread pool."""
    return source_reader()


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
SourceDb = Annotated[Engine, Depends(get_source)]
Authorized = Depends(require_token)
