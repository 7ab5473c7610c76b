"""``GET /signals`` and ``GET /series``: the 10-minute statistics in the target."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response
from sqlalchemy import Connection

from api.deps import TargetConn
from api.errors import json_example, problem_responses
from api.params import IsoDateTime, resolve_range
from windfarm import statistics
from windfarm.config import get_settings
from windfarm.vocabulary import SPEC_SIGNALS

router = APIRouter(tags=["statistics"])

# A name of SPEC_SIGNALS is valid before any worker has written it: its series
# is just empty.
MAX_SIGNALS = 12
# Signal names become column labels of the generated query: only these characters.
_NAME = re.compile(r"[A-Za-z0-9_]{1,100}")


def resolve_signals(conn: Connection, given: list[str]) -> tuple[str, ...]:
    """The distinct requested signal names in order, or a 422 naming the unknown ones."""
    names = tuple(dict.fromkeys(given))
    if len(names) > MAX_SIGNALS:
        raise HTTPException(422, f"ask for at most {MAX_SIGNALS} signals at once")
    odd = [n for n in names if n not in SPEC_SIGNALS]
    if not odd:
        return names
    known = statistics.known_signals(conn, odd) if all(_NAME.fullmatch(n) for n in odd) else set()
    unknown = [n for n in odd if n not in known]
    if unknown:
        shown = ", ".join(repr(n[:60]) for n in unknown)
        raise HTTPException(
            422, f"unknown signal {shown}; GET /signals lists them, e.g. wind_speed_mean_10m"
        )
    return names


@router.get(
    "/signals",
    response_class=Response,
    responses=json_example(
        [
            {"id": 1, "name": "power_max_10m"},
            {"id": 2, "name": "power_mean_10m"},
        ]
    ),
)
def get_signals(conn: TargetConn) -> Response:
    """The signals the target holds values for, by name."""
    return Response(content=statistics.signals_json(conn), media_type="application/json")


@router.get(
    "/series",
    response_class=Response,
    responses={
        **json_example(
            [
                {
                    "timestamp": "2025-12-05T00:00:00",
                    "wind_speed_mean_10m": 7.1,
                    "wind_speed_max_10m": 9.4,
                }
            ]
        ),
        **problem_responses(422),
    },
)
def get_series(
    conn: TargetConn,
    signal: Annotated[
        list[str],
        Query(description="a signal name such as wind_speed_mean_10m; repeatable", min_length=1),
    ],
    start: Annotated[
        IsoDateTime, Query(description="first window start, ISO 8601; naive means UTC")
    ],
    end: Annotated[
        IsoDateTime | None,
        Query(description="last window start, inclusive; default: end of start's day"),
    ] = None,
) -> Response:
    """10-minute values of the signals in ``[start, end]``, one row per window, ordered."""
    start, end = resolve_range(start, end, get_settings().data_max_days)
    names = resolve_signals(conn, signal)
    body = statistics.series_json(conn, names, start, end)
    return Response(content=body, media_type="application/json")
