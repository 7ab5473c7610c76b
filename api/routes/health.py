"""``GET /health``: does the service reach its databases?"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.engine import Engine

from windfarm.db import source_engine, target_engine

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


def _reachable(engine: Engine, name: str) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
        log.warning("health: %s database unreachable: %s", name, exc.__class__.__name__)
        return False


@router.get("/health")
def health() -> JSONResponse:
    """200 when both databases answer, 503 otherwise."""
    checks = {
        "source": _reachable(source_engine(), "source"),
        "target": _reachable(target_engine(), "target"),
    }
    healthy = all(checks.values())
    body = {
        "status": "ok" if healthy else "unavailable",
        **{name: "ok" if ok else "unreachable" for name, ok in checks.items()},
    }
    return JSONResponse(body, status_code=200 if healthy else 503)
