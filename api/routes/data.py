"""``GET /data``: the source's 1-minute rows for a time range."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import SourceDb
from api.errors import json_example, problem_responses
from api.params import IsoDateTime, resolve_range
from windfarm import readings
from windfarm.config import get_settings
from windfarm.db import read_with_retry
from windfarm.vocabulary import VARIABLES

router = APIRouter(tags=["data"])

Variable = StrEnum("Variable", {name: name for name in VARIABLES})  # type: ignore[misc]


@router.get(
    "/data",
    response_class=Response,
    responses={
        **json_example([{"timestamp": "2025-12-05T00:00:00", "wind_speed": 7.1, "power": 812.3}]),
        # 503: the answers in flight already fill API_DATA_BUDGET_BYTES (api/limits.py).
        **problem_responses(422, 503),
    },
)
def get_data(
    source: SourceDb,
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
    body = read_with_retry(source, lambda conn: readings.rows_json(conn, start, end, wanted))
    return Response(content=body, media_type="application/json")
