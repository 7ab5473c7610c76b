"""Request dependencies: a target-database connection and the token check."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection

from windfarm.config import get_settings
from windfarm.db import target_engine

_bearer = HTTPBearer(auto_error=False, description="API_TOKEN, when the service has one")


def get_target() -> Iterator[Connection]:
    """A target connection whose transaction commits when the request succeeds."""
    with target_engine().begin() as conn:
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
Authorized = Depends(require_token)
