"""The dashboard: one HTML page and its assets, shipped in ``api/static``.

The page is static and talks to the public API (``/partitions``, ``/jobs``,
``/data``, ``/series``); ``/dashboard/config`` tells it what it cannot know
from the browser. Nothing is loaded from elsewhere, so it works offline.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import date
from functools import lru_cache
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from windfarm.config import get_settings
from windfarm.db import source_engine

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)

_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}


_STATIC = resources.files("api").joinpath("static")


@lru_cache
def _shipped() -> frozenset[str]:
    """The names of the files in ``api/static`` the page may load."""
    return frozenset(
        node.name for node in _STATIC.iterdir()
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


# Both ends come from the primary-key index: two index lookups, no scan.
_SOURCE_DAYS = text('SELECT min("timestamp"), max("timestamp") FROM data')


def _source_days() -> tuple[date | None, date | None]:
    try:
        with source_engine().connect() as conn:
            first, last = conn.execute(_SOURCE_DAYS).one()
    except Exception as exc:  # noqa: BLE001 - the page then falls back to recent days
        log.warning("dashboard: source database unreachable: %s", exc.__class__.__name__)
        return None, None
    return (first.date() if first else None), (last.date() if last else None)


@router.get("/dashboard/config")
def config() -> JSONResponse:
    """What the page needs to know about this deployment (never the token itself)."""
    settings = get_settings()
    first, last = _source_days()
    return JSONResponse({
        "token_required": settings.api_token is not None,
        # None lets the page use port 5555 of the host it was loaded from.
        "flower_url": settings.flower_url,
        "variables": list(settings.etl_variables),
        "data_max_days": settings.data_max_days,
        "jobs_max_days": settings.jobs_max_days,
        "source_first_day": first and first.isoformat(),
        "source_last_day": last and last.isoformat(),
    })
