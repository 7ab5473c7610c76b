"""The pipeline's state as Prometheus metrics, read from the target database
when Prometheus scrapes the API's ``/metrics`` (``api/metrics.py`` serves them).

- ``windfarm_etl_last_complete_hour_timestamp_seconds``: the end of the
  newest hour whose slice succeeded (0 before any did);
- ``windfarm_etl_missing_hours{window="catchup"}``: hours of the catch-up
  window (``ETL_CATCHUP_DAYS`` back to the last complete hour) with no
  succeeded slice;
- ``windfarm_etl_open_slices{state="queued|running|waiting"}``: open slices now;
- ``windfarm_etl_oldest_open_slice_age_seconds``: how long the oldest open
  slice has been open, since its job was stored (0 when none is);
- ``windfarm_etl_failed_slices{window="1h|24h"}``: slices that failed in the window;
- ``windfarm_etl_database_up``: 1 when the target answered these queries; 0,
  and none of the series above, when it did not;
- ``windfarm_etl_build_info{version}``: the running version (API and workers).

One statement, one round trip, under a statement timeout; each part reads an
index: the newest success and the window's hours probe ``etl_slice_succeeded``
(a few hundred probes at most), the open slices ``etl_slice_open``, the
oldest open job ``etl_job_open``, the failed slices ``etl_slice_failed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, text

from windfarm import __version__
from windfarm.config import Settings, get_settings
from windfarm.db import target_engine
from windfarm.models import OPEN_JOB, OPEN_STATES, SliceState, sql_list
from windfarm.partitions import catchup_start
from windfarm.timeutil import HOUR, hour_floor, utcnow

log = logging.getLogger(__name__)

PREFIX = "windfarm_etl"
STATEMENT_TIMEOUT_MS = 5000

_SUCCEEDED = f"'{SliceState.SUCCEEDED}'"
_OPEN = sql_list(OPEN_STATES)
_NOW = "timezone('utc', now())"

_STATE = text(
    f"""
    SELECT
      (SELECT max(slice_start) FROM etl_slice WHERE state = {_SUCCEEDED}) AS newest_hour,
      (SELECT count(*)
         FROM generate_series(CAST(:first AS timestamp), CAST(:last AS timestamp),
                              interval '1 hour') AS h
        WHERE NOT EXISTS (SELECT FROM etl_slice s
                           WHERE s.slice_start = h AND s.state = {_SUCCEEDED})) AS missing,
      o.queued, o.running, o.waiting,
      (SELECT coalesce(extract(epoch FROM {_NOW} - min(j.created_at)), 0)
         FROM etl_job j
        WHERE j.status IN {sql_list(OPEN_JOB)}
          AND EXISTS (SELECT FROM etl_slice s WHERE s.job_id = j.id AND s.state IN {_OPEN})
      ) AS oldest_open_s,
      f.failed_1h, f.failed_24h
    FROM (SELECT count(*) FILTER (WHERE state = '{SliceState.QUEUED}') AS queued,
                 count(*) FILTER (WHERE state = '{SliceState.RUNNING}') AS running,
                 count(*) FILTER (WHERE state = '{SliceState.WAITING}') AS waiting
            FROM etl_slice WHERE state IN {_OPEN}) AS o,
         (SELECT count(*) FILTER (WHERE finished_at >= {_NOW} - interval '1 hour') AS failed_1h,
                 count(*) AS failed_24h
            FROM etl_slice
           WHERE state = '{SliceState.FAILED}' AND finished_at >= {_NOW} - interval '24 hours'
         ) AS f
    """
)


@dataclass(frozen=True)
class PipelineState:
    newest_hour: datetime | None  # the start of the newest hour whose slice succeeded
    missing_hours: int
    open_slices: dict[str, int]
    oldest_open_s: float
    failed_1h: int
    failed_24h: int

    @property
    def last_complete_hour_end(self) -> float:
        """The end of :attr:`newest_hour` in seconds since the epoch; 0 without one."""
        if self.newest_hour is None:
            return 0.0
        return (self.newest_hour + HOUR).replace(tzinfo=UTC).timestamp()


def catchup_window(now: datetime, settings: Settings) -> tuple[datetime, datetime]:
    """The first and last hour of the catch-up window: what beat fills."""
    return catchup_start(now, settings), hour_floor(now) - HOUR


def pipeline_state(conn: Connection, *, first: datetime, last: datetime) -> PipelineState:
    """The pipeline's state now; the catch-up window is ``[first, last]`` (hours)."""
    row = conn.execute(_STATE, {"first": first, "last": last}).one()
    return PipelineState(
        newest_hour=row.newest_hour,
        missing_hours=row.missing,
        open_slices={
            SliceState.QUEUED: row.queued,
            SliceState.RUNNING: row.running,
            SliceState.WAITING: row.waiting,
        },
        oldest_open_s=float(row.oldest_open_s),
        failed_1h=row.failed_1h,
        failed_24h=row.failed_24h,
    )


def _gauge(name: str, doc: str, value: float | None = None, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))
    if value is not None:
        family.add_metric(list(labels.values()), value)
    return family


def state_metrics(state: PipelineState) -> Iterator[Metric]:
    yield _gauge(
        "last_complete_hour_timestamp_seconds",
        "End of the newest hour whose slice succeeded (Unix time; 0 before any did).",
        state.last_complete_hour_end,
    )
    yield _gauge(
        "missing_hours",
        "Hours of the window with no succeeded slice.",
        state.missing_hours,
        window="catchup",
    )
    open_slices = GaugeMetricFamily(
        f"{PREFIX}_open_slices", "Slices not yet ended, by state.", labels=["state"]
    )
    for name, count in state.open_slices.items():
        open_slices.add_metric([str(name)], count)
    yield open_slices
    yield _gauge(
        "oldest_open_slice_age_seconds",
        "Time since the job of the oldest open slice was stored (0 when none is open).",
        state.oldest_open_s,
    )
    failed = GaugeMetricFamily(
        f"{PREFIX}_failed_slices", "Slices that failed in the window.", labels=["window"]
    )
    failed.add_metric(["1h"], state.failed_1h)
    failed.add_metric(["24h"], state.failed_24h)
    yield failed


class PipelineCollector(Collector):
    """The series of this module's table, queried when a scrape collects them."""

    def __init__(
        self,
        engine: Callable[[], Engine] = target_engine,
        settings: Callable[[], Settings] = get_settings,
    ) -> None:
        self._engine = engine
        self._settings = settings

    def collect(self) -> Iterator[Metric]:
        first, last = catchup_window(utcnow(), self._settings())
        try:
            with self._engine().begin() as conn:
                conn.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
                state = pipeline_state(conn, first=first, last=last)
        except Exception as exc:  # noqa: BLE001 - the scrape still answers, saying so
            log.warning("metrics: the target database did not answer: %s", type(exc).__name__)
            yield _gauge("database_up", "1 when the target database answered this scrape.", 0)
            return
        yield _gauge("database_up", "1 when the target database answered this scrape.", 1)
        yield from state_metrics(state)


class BuildInfo(Collector):
    """``windfarm_etl_build_info{version="..."} 1``."""

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily(f"{PREFIX}_build", "The running version of windfarm-etl.")
        info.add_metric([], {"version": __version__})
        yield info
