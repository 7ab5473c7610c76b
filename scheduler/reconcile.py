"""Send again the slices whose messages were lost or whose wait is over; settle
finished jobs; prune old bookkeeping.

The database is the record of outstanding work. A slice is sent again when:

- it is ``queued`` and unsent: the broker refused it;
- it is ``queued``, was sent more than ``ETL_SLICE_TIMEOUT_S`` ago, and its
  lane cannot still hold its message: the lane's queue is empty, or a slice
  sent to the lane *after* it was claimed more than ``ETL_SLICE_TIMEOUT_S``
  ago. A queue hands out messages in the order they were sent, so the workers
  have gone past this one: its message was lost (a broker restart, a worker
  that died holding it). A long, healthy backlog keeps slices queued but
  never looks like that;
- it is ``running`` with no sign of work for ``ETL_SLICE_TIMEOUT_S``: longer
  than a task's hard time limit, so its worker died;
- it is ``waiting`` and its ``retry_at`` has passed.

Re-sending is safe because the slice task is idempotent. A pass takes the
slices it sends in one transaction (recording them as sent, so the next pass
leaves them alone) and publishes after the commit; the ones the broker
refuses are recorded as unsent, for the next pass. Two reconcilers (two beats)
take turns: one skips its pass while the other's transaction holds the lock.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, text

from windfarm import jobs
from windfarm.models import OPEN_JOB, OPEN_STATES, SliceState, sql_list

log = logging.getLogger(__name__)

# Slices sent again in one pass at most; the rest wait for the next pass.
MAX_RESEND = 10_000

# A lane hands out messages in the order they were sent: by send time, and
# within one send (one transaction's enqueued_at) by job, then hour, the order
# they are published in. The frontier of a lane is the last message, in that
# order, among the claims made just before the timeout (looking back over the
# last few passes only: those are the furthest the workers have gone).
_LOST = text(
    f"""
    WITH frontier AS (
        SELECT DISTINCT ON (j.priority) j.priority, s.enqueued_at, s.job_id, s.slice_start
          FROM etl_slice s JOIN etl_job j ON j.id = s.job_id
         WHERE s.started_at >= :now - make_interval(secs => :timeout + :lookback)
           AND s.started_at < :now - make_interval(secs => :timeout)
           AND s.enqueued_at <= s.started_at
         ORDER BY j.priority, s.enqueued_at DESC, s.job_id DESC, s.slice_start DESC
    )
    SELECT s.job_id, s.slice_start, j.priority
      FROM etl_slice s
      JOIN etl_job j ON j.id = s.job_id
      LEFT JOIN frontier f ON f.priority = j.priority
     WHERE s.state IN {sql_list(OPEN_STATES)}
       AND (   (s.state = '{SliceState.QUEUED}' AND s.enqueued_at IS NULL)
            OR (s.state = '{SliceState.QUEUED}'
                AND s.enqueued_at < :now - make_interval(secs => :timeout)
                AND (CASE WHEN j.priority THEN :priority_empty ELSE :bulk_empty END
                     OR (s.enqueued_at, s.job_id, s.slice_start)
                        < (f.enqueued_at, f.job_id, f.slice_start)))
            OR (s.state = '{SliceState.RUNNING}'
                AND greatest(s.started_at, s.enqueued_at)
                    < :now - make_interval(secs => :timeout))
            OR (s.state = '{SliceState.WAITING}' AND s.retry_at <= :now))
     ORDER BY s.job_id, s.slice_start
     LIMIT :limit
    """
)
_OPEN_JOBS = text(f"SELECT id FROM etl_job WHERE status IN {sql_list(OPEN_JOB)}")
_NOW = text("SELECT timezone('utc', now())")


@dataclass(frozen=True)
class Reconciled:
    resent: int = 0
    settled: int = 0
    pruned: int = 0
    skipped: bool = False


@dataclass(frozen=True)
class Lost:
    job_id: int
    priority: bool
    starts: list[datetime]


def find_lost_slices(
    conn: Connection,
    *,
    timeout_s: float,
    lookback_s: float,
    bulk_empty: bool,
    priority_empty: bool,
    now: datetime | None = None,
) -> list[Lost]:
    """The slices to send again, by job (see the module docstring)."""
    rows = conn.execute(
        _LOST,
        {
            "now": now or conn.scalar(_NOW),
            "timeout": timeout_s,
            "lookback": lookback_s,
            "bulk_empty": bulk_empty,
            "priority_empty": priority_empty,
            "limit": MAX_RESEND,
        },
    )
    found: dict[tuple[int, bool], list[datetime]] = defaultdict(list)
    for job_id, start, priority in rows:
        found[(job_id, priority)].append(start)
    return [Lost(job_id, priority, starts) for (job_id, priority), starts in found.items()]


def try_lock(conn: Connection) -> bool:
    """Only one reconciler at a time; the lock ends with the transaction."""
    return bool(
        conn.scalar(text("SELECT pg_try_advisory_xact_lock(hashtext('windfarm-etl reconcile'))"))
    )


def reconcile(
    engine: Engine,
    *,
    timeout_s: float,
    lookback_s: float,
    bulk_empty: bool,
    priority_empty: bool,
    retention_days: int,
    send: Callable[..., int],
) -> Reconciled:
    """One pass. ``send(job_id, starts, priority=...)`` publishes slices already
    recorded as sent and records those the broker refuses."""
    with engine.begin() as conn:
        if not try_lock(conn):
            return Reconciled(skipped=True)
        lost = find_lost_slices(
            conn,
            timeout_s=timeout_s,
            lookback_s=lookback_s,
            bulk_empty=bulk_empty,
            priority_empty=priority_empty,
        )
        for item in lost:
            jobs.mark_sent(conn, item.job_id, item.starts)
        settled = jobs.settle_jobs(conn, list(conn.scalars(_OPEN_JOBS)))
        pruned = jobs.prune_jobs(conn, older_than_days=retention_days)
    resent = 0
    for item in lost:  # after the commit: no connection is held while publishing
        log.warning(
            "reconcile: sending %d slice(s) of job %d again",
            len(item.starts),
            item.job_id,
            extra={"job_id": item.job_id},
        )
        resent += send(item.job_id, item.starts, priority=item.priority)
    return Reconciled(resent=resent, settled=settled, pruned=pruned)
