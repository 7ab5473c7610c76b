"""The FastAPI application: ``uvicorn api.main:app``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import SQLAlchemyError

from api.errors import (
    database_error_handler,
    internal_error_handler,
    problem_responses,
    validation_handler,
)
from api.limits import RequestLimits
from api.routes import dashboard, data, health, jobs, partitions, series
from windfarm.db import target_engine
from windfarm.models import prepare_target

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    try:
        prepare_target(target_engine())
    except Exception as exc:  # noqa: BLE001 - /health reports it; the API still serves data
        log.warning("target schema not created at start-up: %s", exc.__class__.__name__)
    yield


def create_app() -> FastAPI:
    app = FastAPI(
        title="windfarm-etl",
        summary="Wind-turbine source data and 10-minute statistics ETL jobs.",
        version="0.1.0",
        lifespan=lifespan,
        # Any request can meet api.limits' query-string bound.
        responses=problem_responses(414),
    )
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(SQLAlchemyError, database_error_handler)
    app.add_exception_handler(Exception, internal_error_handler)
    app.add_middleware(RequestLimits)
    app.include_router(data.router)
    app.include_router(jobs.router)
    app.include_router(partitions.router)
    app.include_router(series.router)
    app.include_router(health.router)
    app.include_router(dashboard.router)
    return app


app = create_app()
