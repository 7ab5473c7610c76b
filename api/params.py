"""Query parameters: ISO 8601 dates and date-times within what UTC can hold,
and the time range a request asks for.

Pydantic also reads a bare number as a Unix timestamp, so ``start=20251205``
would quietly mean 1970-08-23; and an offset can push a valid date-time past
year 1 or 9999 once converted to UTC. Both are refused as 422s here, before an
endpoint sees them.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Annotated

from fastapi import HTTPException
from pydantic import AfterValidator, BeforeValidator

from api.errors import DATE_HINT, DATETIME_HINT
from windfarm.timeutil import end_of_day, to_utc

_NUMBER = re.compile(r"\s*[+-]?\d+(\.\d*)?\s*")


def _not_a_number(hint: str):
    def check(value: object) -> object:
        if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
            raise ValueError(f"{value!r} is not {hint}")
        return value

    return check


def _representable_in_utc(value: datetime) -> datetime:
    try:
        to_utc(value)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is out of range once converted to UTC") from None
    return value


IsoDateTime = Annotated[
    datetime, BeforeValidator(_not_a_number(DATETIME_HINT)), AfterValidator(_representable_in_utc)
]
IsoDate = Annotated[date, BeforeValidator(_not_a_number(DATE_HINT))]


def resolve_range(
    start: datetime, end: datetime | None, max_days: int
) -> tuple[datetime, datetime]:
    """The UTC ``[start, end]`` a request asks for, or a 422 saying why not."""
    start = to_utc(start)
    end = end_of_day(start) if end is None else to_utc(end)
    if end < start:
        raise HTTPException(422, f"end {end.isoformat()} is before start {start.isoformat()}")
    if end - start > timedelta(days=max_days):
        raise HTTPException(
            422,
            f"the range {start.isoformat()} .. {end.isoformat()} is longer than "
            f"{max_days} days (DATA_MAX_DAYS); ask for it in smaller pieces",
        )
    return start, end
