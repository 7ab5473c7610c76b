"""``GET /health``: does the service reach its databases?"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from windfarm import __version__
from windfarm.db import reachable, source_reader, target_engine

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


def _check(name: str, ok: bool) -> bool:
    if not ok:
        log.warning("health: %s database unreachable", name)
    return ok


@router.get("/health")
def health() -> JSONResponse:
    """200 when both databases answer, 503 otherwise."""
    checks = {
        "source": _check("source", reachable(source_reader())),
        "target": _check("target", reachable(target_engine())),
    }
    healthy = all(checks.values())
    body = {
        "status": "ok" if healthy else "unavailable",
        "version": __version__,
        **{name: "ok" if ok else "unreachable" for name, ok in checks.items()},
    }
    return JSONResponse(body, status_code=200 if healthy else 503)
