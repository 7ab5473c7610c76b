"""``GET /partitions``: which days and hours are processed, as a grid
(the query and its rules: ``windfarm/partitions.py``)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response

from api.deps import TargetConn
from api.errors import json_example, problem_responses
from api.params import IsoDate
from windfarm import jobs, partitions
from windfarm.config import get_settings
from windfarm.timeutil import utcnow

router = APIRouter(tags=["partitions"])

_EXAMPLE = {
    "start_date": "2025-12-05",
    "end_date": "2025-12-05",
    "catchup_from": "2025-11-28T14:00:00",
    "days": [
        {
            "date": "2025-12-05",
            "counts": {
                "succeeded": 23,
                "failed": 1,
                "running": 0,
                "queued": 0,
                "waiting": 0,
                "never_run": 0,
                "beyond_catchup": 1,
            },
            "hours": [
                {
                    "hour": 0,
                    "slice_start": "2025-12-05T00:00:00",
                    "state": "failed",
                    "job_id": 7,
                    "attempts": 1,
                    "enqueued_at": "2025-12-06T02:00:00.1",
                    "started_at": "2025-12-06T02:00:01",
                    "finished_at": "2025-12-06T02:00:01.5",
                    "retry_at": None,
                    "error": "HTTP 404 from the API",
                    "last_succeeded_at": "2025-12-05T01:05:02",
                    "beyond_catchup": True,
                }
            ],
        }
    ],
}


def resolve_days(start: dt.date, end: dt.date | None, max_days: int) -> tuple[dt.date, dt.date]:
    """The inclusive days a request asks for, or a 422 saying why not."""
    end = start if end is None else end
    try:
        jobs.check_days(start, end, max_days=max_days)
    except jobs.RangeError as exc:
        raise HTTPException(422, str(exc)) from None
    return start, end


@router.get(
    "/partitions",
    response_class=Response,
    responses={**json_example(_EXAMPLE), **problem_responses(422)},
)
def get_partitions(
    conn: TargetConn,
    start_date: Annotated[IsoDate, Query(description="first day, ISO 8601 (UTC)")],
    end_date: Annotated[
        IsoDate | None, Query(description="last day, inclusive; default: start_date")
    ] = None,
) -> Response:
    """The state of every hour slice of each day, as its newest job left it."""
    settings = get_settings()
    first, last = resolve_days(start_date, end_date, settings.jobs_max_days)
    body = partitions.grid(
        conn, first, last, catchup_from=partitions.catchup_start(utcnow(), settings)
    )
    return Response(content=body, media_type="application/json")
