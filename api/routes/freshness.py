"""``GET /freshness``: how far behind the statistics are, for the dashboard's
header (the same state ``/metrics`` exports, as JSON)."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import TargetConn
from windfarm.config import get_settings
from windfarm.metrics import catchup_window, pipeline_state
from windfarm.timeutil import HOUR, utcnow

router = APIRouter(tags=["health"])

# The alert on stale statistics (deploy/prometheus/alerts.yml) fires past this.
STALE_AFTER_S = 2 * 3600


class Freshness(BaseModel):
    newest_complete_hour: dt.datetime | None = Field(
        description="the start of the newest hour whose slice succeeded (UTC)"
    )
    lag_s: float | None = Field(description="seconds since that hour ended")
    stale: bool = Field(description="the lag is past the alert's threshold")
    stale_after_s: int
    failed_slices_24h: int = Field(description="slices that failed in the last 24 hours")
    open_slices: int


@router.get("/freshness", response_model=Freshness)
def get_freshness(conn: TargetConn) -> Freshness:
    """The newest complete hour, the lag behind it, and recent failures."""
    now = utcnow()
    first, last = catchup_window(now, get_settings())
    state = pipeline_state(conn, first=first, last=last)
    newest = state.newest_hour
    lag = (now - (newest + HOUR)).total_seconds() if newest is not None else None
    return Freshness(
        newest_complete_hour=newest,
        lag_s=lag,
        stale=lag is None or lag > STALE_AFTER_S,
        stale_after_s=STALE_AFTER_S,
        failed_slices_24h=state.failed_24h,
        open_slices=sum(state.open_slices.values()),
    )
