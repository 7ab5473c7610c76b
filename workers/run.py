"""Process one slice: take the hour, claim the slice, fetch it, compute its
statistics, write them.

:func:`run_slice` is the whole job of the Celery task and of the CLI. It ends
a slice ``succeeded`` (rows and bookkeeping in one transaction) or ``failed``
with the reason, or raises :class:`~workers.errors.TransientError` and leaves
the slice ``running`` for the caller to retry, or to leave waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from windfarm import jobs, logs
from windfarm.config import get_settings
from windfarm.db import target_engine
from windfarm.timeutil import hour_floor, to_utc
from windfarm.vocabulary import signal_names
from workers import metrics
from workers.errors import PermanentError, TargetUnavailable, TransientError, describe
from workers.source import Getter, fetch_slice
from workers.stats import stat_rows
from workers.store import HourSession, hour_session, signal_ids

log = logging.getLogger(__name__)

# Claims that found the slice still running, i.e. attempts that never
# finished (the worker was killed, or hit its hard time limit). A slice that
# keeps killing its worker is requeued on worker loss each time; this bounds it.
MAX_UNFINISHED = 3


@dataclass(frozen=True)
class SliceOutcome:
    """How a run ended: ``succeeded``, ``failed`` or ``skipped`` (already ended or unknown)."""

    state: str
    rows_written: int = 0
    error: str | None = None
    values_ignored: int = 0


def parse_hour(value: str | datetime) -> datetime:
    """The naive UTC hour a slice argument names; ValueError unless it is a whole hour."""
    hour = to_utc(datetime.fromisoformat(value) if isinstance(value, str) else value)
    if hour != hour_floor(hour):
        raise ValueError(f"a slice starts on a whole hour, not at {hour.isoformat()}")
    return hour


def target_unavailable(exc: BaseException) -> TargetUnavailable | None:
    """The :class:`TargetUnavailable` that ``exc`` means, if it is a lost or refused
    database connection (or another operational error: a deadlock, a cancelled
    statement); None for any other error."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)):
        return TargetUnavailable(f"target database unavailable: {describe(exc)}")
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return TargetUnavailable(f"target database connection lost: {describe(exc)}")
    return None


@contextmanager
def target_errors() -> Iterator[None]:
    """Turn a lost or refused database connection into :class:`TargetUnavailable`."""
    try:
        yield
    except (DBAPIError, PoolTimeout) as exc:
        unavailable = target_unavailable(exc)
        if unavailable is None:
            raise
        raise unavailable from exc


def run_slice(
    job_id: int, slice_start: str | datetime, *, client: Getter | None = None
) -> SliceOutcome:
    """Process one slice of a job; see the module docstring for how it can end.
    Everything it logs carries the slice's ``job_id`` and ``slice``."""
    hour = parse_hour(slice_start)
    variables = get_settings().etl_variables
    engine = target_engine()
    with logs.slice_context(job_id, hour), target_errors():
        # Before the hour's turn: no second pooled connection while holding one.
        ids = signal_ids(engine, signal_names(variables))
        with hour_session(engine, job_id, hour) as session:
            claim = session.claim()
            if claim is None:
                log.info("slice already ended or unknown; nothing to do")
                return SliceOutcome("skipped")
            if claim.unfinished >= MAX_UNFINISHED:
                return _fail(
                    session,
                    f"abandoned after {claim.unfinished} attempts that never "
                    "finished (worker killed or over its time limit?)",
                )
            try:
                return process(session, claim, ids, variables=variables, client=client)
            except PermanentError as exc:
                return _fail(session, describe(exc))
            except (TransientError, SoftTimeLimitExceeded):
                raise
            except Exception as exc:
                # The connection lost mid-slice (the target restarted): the
                # slice is retried, like one whose connection was refused.
                unavailable = target_unavailable(exc)
                if unavailable is not None:
                    raise unavailable from exc
                log.exception("unexpected error")
                return _fail(session, f"unexpected error: {describe(exc)}")


def process(
    session: HourSession,
    claim: jobs.Claim,
    ids: dict[str, int],
    *,
    variables: tuple[str, ...],
    client: Getter | None = None,
) -> SliceOutcome:
    """Fetch, compute and write one slice; mark it succeeded in the same transaction."""
    hour = session.hour
    with metrics.phase("fetch"):
        data = fetch_slice(hour, variables=variables, client=client)
    if not len(data) and not claim.allow_empty and session.holds_statistics(ids):
        return _fail(
            session,
            f"the source has no rows for {hour.isoformat()}, whose statistics "
            "the target holds; nothing was erased (a job with allow_empty "
            "may erase them)",
        )
    with metrics.phase("compute"):
        rows = stat_rows(data.timestamps, data.columns)
    with metrics.phase("write"):
        written = session.commit(rows, ids, values_ignored=data.ignored)
    metrics.rows(written=written, read=len(data), ignored=data.ignored)
    log.debug(
        "slice succeeded: %d rows from %d source rows%s",
        written,
        len(data),
        f", {data.ignored} non-finite values ignored" if data.ignored else "",
    )
    _log_job_end(session)
    return SliceOutcome("succeeded", written, values_ignored=data.ignored)


def _fail(session: HourSession, message: str) -> SliceOutcome:
    log.warning("slice failed: %s", message)
    session.fail(message)
    _log_job_end(session)
    return SliceOutcome("failed", error=message)


def _log_job_end(session: HourSession) -> None:
    """The one INFO line of a job: by the worker whose slice's end settled it."""
    ended = session.ended
    if ended is None:
        return
    took = (ended.finished_at - ended.created_at).total_seconds()
    log.info(
        "job %d %s: %d slices, %d succeeded, %d failed, %d rows written, %.1f s after "
        "it was stored",
        ended.id,
        ended.status,
        ended.slices_total,
        ended.slices_succeeded,
        ended.slices_failed,
        ended.rows_written,
        took,
        extra={
            "job_status": ended.status,
            "origin": ended.origin,
            "slices_total": ended.slices_total,
            "slices_failed": ended.slices_failed,
            "rows_written": ended.rows_written,
            "duration_s": round(took, 3),
        },
    )


def leave_waiting(job_id: int, slice_start: str | datetime, message: str) -> None:
    """Leave the slice waiting, with ``message``, for the reconciler to send it
    again later; TargetUnavailable when the target cannot record it."""
    settings = get_settings()
    hour = parse_hour(slice_start)
    with logs.slice_context(job_id, hour):
        log.warning("slice waits: %s", message)
    with target_errors(), target_engine().begin() as conn:
        jobs.wait_slice(
            conn,
            job_id,
            hour,
            message,
            first_s=settings.etl_reconcile_every_s,
            max_s=settings.etl_wait_max_s,
        )


def requeue(job_id: int, slice_start: str | datetime, message: str) -> None:
    """Record that the slice is queued again, for a retry, with ``message``."""
    hour = parse_hour(slice_start)
    with target_errors(), target_engine().begin() as conn:
        jobs.requeue_slice(conn, job_id, hour, message)
