"""The dashboard: one HTML page and its assets, shipped in ``api/static``.

The page is static and talks to the public API (``/partitions``, ``/jobs``,
``/data``, ``/series``); ``/dashboard/config`` tells it what it cannot know
from the browser. Nothing is loaded from elsewhere, so it works offline.
"""

from __future__ import annotations

import hashlib
import logging
from functools import lru_cache
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError

from api.deps import SourceDb
from windfarm import readings
from windfarm.config import get_settings
from windfarm.db import read_with_retry

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


_STATIC = resources.files("api").joinpath("static")


@lru_cache
def _shipped() -> frozenset[str]:
    """The names of the files in ``api/static`` the page may load."""
    return frozenset(
        node.name
        for node in _STATIC.iterdir()
        if node.is_file() and "." + node.name.rpartition(".")[2] in _TYPES
    )


@lru_cache
def _asset(name: str) -> tuple[bytes, str, str]:
    """Content, media type and ETag of a shipped file, read once."""
    body = _STATIC.joinpath(name).read_bytes()
    media_type = _TYPES["." + name.rpartition(".")[2]]
    return body, media_type, '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


def _serve(name: str, if_none_match: str | None) -> Response:
    # Only names of shipped files reach the cache or the file system.
    if name not in _shipped():
        raise HTTPException(404, f"there is no dashboard file {name[:60]!r}")
    body, media_type, etag = _asset(name)
    # Revalidate every time: a deploy changes the files under the same names.
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


IfNoneMatch = Annotated[str | None, Header()]


@router.get("/")
@router.get("/dashboard")
def page(if_none_match: IfNoneMatch = None) -> Response:
    """The dashboard page."""
    return _serve("index.html", if_none_match)


@router.get("/static/{name}")
def asset(name: str, if_none_match: IfNoneMatch = None) -> Response:
    """A script, style sheet or image of the page."""
    return _serve(name, if_none_match)


@router.get("/dashboard/config")
def config(source: SourceDb) -> JSONResponse:
    """What the page needs to know about this deployment (never the token itself)."""
    settings = get_settings()
    try:
        first, last = read_with_retry(source, readings.source_days)
    except DBAPIError as exc:
        # Without the source the page falls back to recent days.
        log.warning("source database unreachable: %s", type(exc).__name__)
        first, last = None, None
    return JSONResponse(
        {
            "token_required": settings.api_token is not None,
            # None lets the page use port 5555 of the host it was loaded from.
            "flower_url": settings.flower_url,
            "variables": list(settings.etl_variables),
            "data_max_days": settings.data_max_days,
            "jobs_max_days": settings.jobs_max_days,
            "source_first_day": first and first.isoformat(),
            "source_last_day": last and last.isoformat(),
        }
    )
