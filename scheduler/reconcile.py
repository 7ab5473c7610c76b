"""Find slices whose messages were lost and send them again; settle finished jobs.

The database is the record of outstanding work. A slice is lost when:

- it was never sent (the broker was down when its job was stored);
- it is ``queued``, was sent more than ``ETL_SLICE_TIMEOUT_S`` ago and the
  broker's queue is empty, so no message for it can still be waiting (a long,
  healthy backlog keeps the queue non-empty and is left alone);
- it is ``running`` with no sign of work for ``ETL_SLICE_TIMEOUT_S``: longer
  than a task's hard time limit, so its worker died.

Re-sending is safe because the slice task is idempotent. Sending a slice sets
its ``enqueued_at``, which restarts its clock, so the next pass leaves it alone;
a send the broker refused leaves it as it was, to be tried again. Two
reconcilers (two beats) take turns on an advisory lock held while they send.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

from windfarm import jobs

log = logging.getLogger(__name__)

# Slices of a job stored this recently are still being sent by whoever stored it.
SEND_GRACE_S = 10

_LOST = text(
    """
    SELECT s.job_id, s.slice_start
      FROM etl_slice s JOIN etl_job j ON j.id = s.job_id
     WHERE s.state IN ('queued', 'running')
       AND (   (s.state = 'queued' AND s.enqueued_at IS NULL
                AND j.created_at < timezone('utc', now()) - make_interval(secs => :grace))
            OR (s.state = 'queued' AND :queue_empty
                AND s.enqueued_at < timezone('utc', now()) - make_interval(secs => :timeout))
            OR (s.state = 'running'
                AND greatest(s.started_at, s.enqueued_at)
                    < timezone('utc', now()) - make_interval(secs => :timeout)))
     ORDER BY s.job_id, s.slice_start
    """
)


@dataclass(frozen=True)
class Reconciled:
    resent: int
    settled: int
    skipped: bool = False


def find_lost_slices(
    conn: Connection, *, timeout_s: float, queue_empty: bool
) -> dict[int, list[datetime]]:
    """The lost slices, by job."""
    rows = conn.execute(
        _LOST, {"grace": SEND_GRACE_S, "timeout": timeout_s, "queue_empty": queue_empty}
    )
    lost: dict[int, list[datetime]] = defaultdict(list)
    for job_id, start in rows:
        lost[job_id].append(start)
    return dict(lost)


def try_lock(conn: Connection) -> bool:
    """Only one reconciler at a time; the lock ends with the transaction."""
    return bool(conn.scalar(
        text("SELECT pg_try_advisory_xact_lock(hashtext('windfarm-etl reconcile'))")))


def reconcile(
    conn: Connection, *, timeout_s: float, queue_empty: bool, send
) -> Reconciled:
    """One pass. ``send(job_id, starts) -> int`` publishes and records what it sent."""
    if not try_lock(conn):
        return Reconciled(resent=0, settled=0, skipped=True)
    lost = find_lost_slices(conn, timeout_s=timeout_s, queue_empty=queue_empty)
    resent = 0
    for job_id, starts in lost.items():
        log.warning("reconcile: sending %d lost slice(s) of job %d", len(starts), job_id)
        resent += send(job_id, starts)
    settled = jobs.settle_jobs(conn)
    conn.commit()
    return Reconciled(resent=resent, settled=settled)
