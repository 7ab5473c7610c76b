"""``GET /data``: the source's 1-minute rows for a time range."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from api.errors import problem_responses
from api.params import IsoDateTime, resolve_range
from windfarm.config import get_settings
from windfarm.db import autocommit, source_engine
from windfarm.vocabulary import VARIABLES

router = APIRouter(tags=["data"])

Variable = StrEnum("Variable", {name: name for name in VARIABLES})


@lru_cache
def _query(variables: tuple[str, ...]):
    # PostgreSQL builds the JSON itself: one text value crosses the wire and
    # Python never touches a row. Aggregating whole rows is about a third
    # cheaper than json_build_object per row. Column names come from the
    # closed set above.
    columns = ", ".join(variables)
    return text(
        f"""SELECT coalesce(json_agg(d ORDER BY "timestamp"), '[]')::text
            FROM (SELECT "timestamp", {columns} FROM data
                  WHERE "timestamp" BETWEEN :start AND :end) d"""
    )


def _read(query, params: dict):
    """One read in one round trip (no transaction to open or roll back). The
    pool is not pre-pinged, so a connection that died with a database restart
    fails once and is replaced: that read is tried once more."""
    for attempt in (1, 2):
        try:
            with autocommit(source_engine()).connect() as conn:
                return conn.scalar(query, params)
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise


@router.get(
    "/data",
    response_class=Response,
    responses={
        200: {"content": {"application/json": {"example": [
            {"timestamp": "2025-12-05T00:00:00", "wind_speed": 7.1, "power": 812.3}
        ]}}},
        **problem_responses(422),
    },
)
def get_data(
    start: Annotated[IsoDateTime, Query(description="first instant, ISO 8601; naive means UTC")],
    end: Annotated[
        IsoDateTime | None,
        Query(description="last instant, inclusive; default: end of start's day"),
    ] = None,
    variables: Annotated[
        list[Variable] | None, Query(description="repeatable; omitted means all", max_length=10)
    ] = None,
) -> Response:
    """Source rows of ``[start, end]``, ordered by timestamp."""
    start, end = resolve_range(start, end, get_settings().data_max_days)
    wanted = {v.value for v in variables or Variable}
    chosen = tuple(name for name in VARIABLES if name in wanted)
    body = _read(_query(chosen), {"start": start, "end": end})
    return Response(content=body, media_type="application/json")
