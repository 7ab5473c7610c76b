"""Send slices to the queue.

The database is the record of outstanding work: a job and its slices are
stored before anything is sent, and a slice's ``enqueued_at`` is set only once
the broker has accepted its message. When the broker is down, sending stops
at the first refusal and the rest stay ``queued`` and unsent, for the
reconciler to send later. Nothing here raises for a broker or database outage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import date, datetime

from windfarm import jobs
from windfarm.db import target_engine
from workers.celery_app import app
from workers.tasks import process_slice

log = logging.getLogger(__name__)

# Messages sent in one Redis pipeline. A chunk counts as sent only once its
# pipeline has executed; a failed chunk stays unsent in the database (some of
# its messages may have arrived: a resend is harmless, the task is idempotent).
CHUNK = 500


def enqueue_slices(job_id: int, starts: Sequence[datetime]) -> int:
    """Send one message per slice start; how many the broker accepted."""
    sent: list[datetime] = []
    try:
        # One producer (one connection) for the whole batch; no publish retries,
        # so a dead broker costs seconds, not minutes.
        with app.producer_or_acquire() as producer:
            for i in range(0, len(starts), CHUNK):
                chunk = starts[i : i + CHUNK]
                with _pipelined(producer, len(chunk)):
                    for start in chunk:
                        process_slice.apply_async(
                            (job_id, start.isoformat()), producer=producer, retry=False
                        )
                sent.extend(chunk)
    except Exception as exc:  # noqa: BLE001 - any broker failure: the database keeps the rest
        log.warning(
            "job %s: broker refused slices (%s: %s); %d of %d sent, "
            "the rest wait for the reconciler",
            job_id, type(exc).__name__, exc, len(sent), len(starts),
        )
    _record_sent(job_id, sent)
    return len(sent)


def _pipelined(producer, messages: int):
    """Buffer the chunk's Redis commands (a message and its sent event each) and
    execute them together on exit; kombu < 5.7 has no batches and sends at once."""
    batch = getattr(producer, "batch", None)
    return batch(max_size=4 * messages + 16) if batch else nullcontext()


def _record_sent(job_id: int, sent: list[datetime]) -> None:
    if not sent:
        return
    try:
        with target_engine().begin() as conn:
            jobs.mark_enqueued(conn, job_id, sent)
    except Exception as exc:  # noqa: BLE001 - unrecorded sends are only resent, harmlessly
        log.warning("job %s: could not record %d sent slices: %s", job_id, len(sent),
                    type(exc).__name__)


def store_job(
    *, origin: str, start_date: date, end_date: date, dedupe_key: str | None = None
) -> int | None:
    """Store a job and its slices (committed); its id, or None when ``dedupe_key`` exists."""
    with target_engine().begin() as conn:
        return jobs.create_job(
            conn, origin=origin, start_date=start_date, end_date=end_date, dedupe_key=dedupe_key
        )


def submit_job(
    *, origin: str, start_date: date, end_date: date, dedupe_key: str | None = None
) -> int | None:
    """Store a job for ``[start_date, end_date]`` and send its slices; the job id,
    or None when a job with ``dedupe_key`` already exists."""
    job_id = store_job(
        origin=origin, start_date=start_date, end_date=end_date, dedupe_key=dedupe_key
    )
    if job_id is not None:
        enqueue_slices(job_id, jobs.job_slices(start_date, end_date))
    return job_id
