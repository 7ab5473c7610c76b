"""Process one slice: claim it, fetch it, compute its statistics, write them.

:func:`run_slice` is the whole job of the Celery task and of the CLI. It ends
a slice ``succeeded`` (rows and bookkeeping in one transaction) or ``failed``
with the reason, or raises :class:`~workers.errors.TransientError` and leaves
the slice ``running`` for the caller to retry (or the reconciler to resend).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import httpx
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from windfarm import jobs
from windfarm.config import get_settings
from windfarm.db import target_engine
from windfarm.timeutil import hour_floor, to_utc
from workers.errors import PermanentError, TargetUnavailable, TransientError, describe
from workers.source import fetch_slice
from workers.stats import signal_names, stat_rows
from workers.store import commit_slice, signal_ids

log = logging.getLogger(__name__)

# Attempts beyond the retries: a slice whose worker keeps dying (OOM, a hard
# time limit) is requeued on worker loss; this bounds that loop.
EXTRA_ATTEMPTS = 2


@dataclass(frozen=True)
class SliceOutcome:
    """How a run ended: ``succeeded``, ``failed`` or ``skipped`` (already ended or unknown)."""

    state: str
    rows_written: int = 0
    error: str | None = None


def parse_hour(value: str | datetime) -> datetime:
    """The naive UTC hour a slice argument names; ValueError unless it is a whole hour."""
    hour = to_utc(datetime.fromisoformat(value) if isinstance(value, str) else value)
    if hour != hour_floor(hour):
        raise ValueError(f"a slice starts on a whole hour, not at {hour.isoformat()}")
    return hour


def max_attempts() -> int:
    """Claims of one slice after which it is abandoned."""
    return get_settings().etl_max_retries + 1 + EXTRA_ATTEMPTS


@contextmanager
def target_errors() -> Iterator[None]:
    """Turn a lost or refused database connection into :class:`TargetUnavailable`."""
    try:
        yield
    except (OperationalError, InterfaceError, PoolTimeout) as exc:
        raise TargetUnavailable(f"target database unavailable: {describe(exc)}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise TargetUnavailable(f"target database connection lost: {describe(exc)}") from exc
        raise


def run_slice(
    job_id: int, slice_start: str | datetime, *, client: httpx.Client | None = None
) -> SliceOutcome:
    """Process one slice of a job; see the module docstring for how it can end."""
    hour = parse_hour(slice_start)
    with target_errors():
        attempt = jobs.claim_slice_now(target_engine(), job_id, hour)
    if attempt is None:
        log.info("slice %s of job %s already ended or unknown; nothing to do", hour, job_id)
        return SliceOutcome("skipped")
    if attempt > max_attempts():
        return give_up(
            job_id, hour,
            f"abandoned after {attempt - 1} attempts that never finished "
            "(worker killed or over its time limit?)",
        )
    try:
        return SliceOutcome("succeeded", process(job_id, hour, client=client))
    except PermanentError as exc:
        return give_up(job_id, hour, describe(exc))
    except (TransientError, SoftTimeLimitExceeded):
        raise
    except Exception as exc:  # noqa: BLE001 - a bug must end the slice, not strand it
        log.exception("slice %s of job %s: unexpected error", hour, job_id)
        return give_up(job_id, hour, f"unexpected error: {describe(exc)}")


def process(job_id: int, hour: datetime, *, client: httpx.Client | None = None) -> int:
    """Fetch, compute and write one slice; mark it succeeded in the same transaction."""
    variables = get_settings().etl_variables
    data = fetch_slice(hour, variables=variables, client=client)
    rows = stat_rows(data.timestamps, data.columns)
    engine = target_engine()
    with target_errors():
        ids = signal_ids(engine, signal_names(variables))
        written = commit_slice(engine, job_id, hour, rows, ids=ids)
    log.info("slice %s of job %s: %d rows from %d source rows", hour, job_id, written, len(data))
    return written


def give_up(job_id: int, slice_start: str | datetime, message: str) -> SliceOutcome:
    """Mark the slice failed for good with ``message``."""
    hour = parse_hour(slice_start)
    log.warning("slice %s of job %s failed: %s", hour, job_id, message)
    with target_errors(), target_engine().begin() as conn:
        jobs.fail_slice(conn, job_id, hour, message)
    return SliceOutcome("failed", error=message)
