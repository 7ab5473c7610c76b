"""The FastAPI application: ``uvicorn api.main:app`` (or ``python -m api.serve``,
which adds the connection limits only the server can apply)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp

from api.errors import (
    database_error_handler,
    internal_error_handler,
    problem_responses,
    validation_handler,
)
from api.limits import DataBudget, RequestLimits, SendGuard, return_freed_memory
from api.metrics import install as install_metrics
from api.routes import dashboard, data, freshness, health, jobs, partitions, series
from api.security import SecurityHeaders, add_offline_docs
from windfarm import __version__
from windfarm.config import get_settings
from windfarm.db import target_engine
from windfarm.logs import setup_logging
from windfarm.models import prepare_target

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    return_freed_memory()
    try:
        prepare_target(target_engine())
    except Exception as exc:  # noqa: BLE001 - /health reports it; the API still serves data
        log.warning("target schema not created at start-up: %s", exc.__class__.__name__)
    yield


class HardenedAPI(FastAPI):
    """FastAPI with two layers outside even its error handling, so that they see
    every answer, a 500 included: :class:`api.limits.SendGuard` (outermost, on
    the server's own ``send``) and :class:`api.security.SecurityHeaders`."""

    def build_middleware_stack(self) -> ASGIApp:
        settings = get_settings()
        return SendGuard(
            SecurityHeaders(super().build_middleware_stack()), timeout=settings.api_send_timeout_s
        )


def create_app() -> FastAPI:
    setup_logging()
    settings = get_settings()
    app = HardenedAPI(
        title="windfarm-etl",
        summary="Wind-turbine source data and 10-minute statistics ETL jobs.",
        version=__version__,
        lifespan=lifespan,
        # Any request can meet api.limits' query-string bound.
        responses=problem_responses(414),
        # Served by api.security from packaged files, under their own policy.
        docs_url=None,
        redoc_url=None,
    )
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(SQLAlchemyError, database_error_handler)
    app.add_exception_handler(Exception, internal_error_handler)
    # The last added runs first: the host check, then the budget, then the sizes.
    app.add_middleware(RequestLimits)
    app.add_middleware(
        DataBudget, budget=settings.api_data_budget_bytes, max_days=settings.data_max_days
    )
    if settings.allowed_hosts:  # unset: any Host
        app.add_middleware(
            TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts), www_redirect=False
        )
    add_offline_docs(app)
    app.include_router(data.router)
    app.include_router(jobs.router)
    app.include_router(partitions.router)
    app.include_router(series.router)
    app.include_router(health.router)
    app.include_router(freshness.router)
    app.include_router(dashboard.router)
    install_metrics(app)
    return app


app = create_app()
