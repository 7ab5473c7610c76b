"""Store jobs and send their slices to the broker, by task name.

The database is the record of outstanding work: a job and its slices are
committed, recorded as sent, before anything is published; the slices the
broker then refuses are recorded as unsent. When the broker is down, sending
stops at the first refusal and the rest stay ``queued`` and unsent, for the
reconciler to send later. Nothing here raises for a broker outage, and no
database connection is held while publishing.

This module imports no task code: the API, beat's tasks and the CLI publish
``workers.process_slice`` by name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from datetime import datetime
from typing import Any

from kombu.exceptions import ChannelError
from sqlalchemy import text

from windfarm import jobs
from windfarm.config import get_settings
from windfarm.db import target_engine
from windfarm.queue import SLICE_TASK, app, lane

log = logging.getLogger(__name__)

# Messages sent in one Redis pipeline. A chunk counts as sent only once its
# pipeline has executed; a failed chunk counts as unsent (some of its messages
# may have arrived: a resend is harmless, the task is idempotent).
CHUNK = 500


def publish(job_id: int, starts: Sequence[datetime], *, priority: bool = False) -> int:
    """Publish one message per slice start, in order, to the job's lane; how many
    the broker accepted before the first refusal. Touches no database."""
    queue = lane(get_settings(), priority=priority)
    sent = 0
    try:
        # One producer (one connection) for the whole batch; no publish retries,
        # so a dead broker costs seconds, not minutes.
        with app.producer_or_acquire() as producer:
            for i in range(0, len(starts), CHUNK):
                chunk = starts[i : i + CHUNK]
                with _pipelined(producer, len(chunk)):
                    for start in chunk:
                        app.send_task(SLICE_TASK, (job_id, start.isoformat()), queue=queue,
                                      routing_key=queue, producer=producer, retry=False)
                sent += len(chunk)
    except Exception as exc:  # noqa: BLE001 - any broker failure: the database keeps the rest
        log.warning(
            "job %s: broker refused slices (%s: %s); %d of %d sent, "
            "the rest wait for the reconciler",
            job_id, type(exc).__name__, exc, sent, len(starts),
        )
    return sent


def _pipelined(producer, messages: int):
    """Buffer the chunk's Redis commands (a message and its sent event each) and
    execute them together on exit; kombu < 5.7 has no batches and sends at once."""
    batch = getattr(producer, "batch", None)
    return batch(max_size=4 * messages + 16) if batch else nullcontext()


def send_slices(job_id: int, starts: Sequence[datetime], *, priority: bool = False) -> int:
    """Publish slices already recorded as sent (:func:`jobs.store_job`,
    :func:`jobs.mark_sent`) and record the ones the broker refused; how many went."""
    sent = publish(job_id, starts, priority=priority)
    if sent < len(starts):
        try:
            with target_engine().begin() as conn:
                jobs.mark_unsent(conn, job_id, list(starts[sent:]))
        except Exception as exc:  # noqa: BLE001 - then they look lost, and are resent later
            log.warning("job %s: could not record %d unsent slices: %s", job_id,
                        len(starts) - sent, type(exc).__name__)
    return sent


def _now(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    fn(*args, **kwargs)


def submit_job(
    *,
    origin: str,
    hours: list[datetime],
    priority: bool = False,
    allow_empty: bool = False,
    dedupe_key: str | None = None,
    only_missing: bool = False,
    defer: Callable[..., Any] = _now,
) -> jobs.JobView | None:
    """Store a job of the slices ``hours`` (committed, its connection given back),
    then send them through ``defer(send_slices, ...)``: at once by default, or
    later (the API passes its background tasks).

    ``only_missing`` keeps only the hours with neither a succeeded nor an open
    slice, decided under a lock that concurrent callers take in turn, so two
    schedulers fill a gap once. The stored job, or None when a job with
    ``dedupe_key`` exists or no hour is left.
    """
    with target_engine().begin() as conn:
        if only_missing:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('windfarm-etl submit'))"))
            hours = jobs.missing_hours(conn, hours)
        job_id = (jobs.store_job(conn, origin=origin, hours=hours, priority=priority,
                                 allow_empty=allow_empty, dedupe_key=dedupe_key)
                  if hours else None)
        view = jobs.get_job(conn, job_id) if job_id is not None else None
    if view is not None:
        defer(send_slices, view.id, hours, priority=priority)
    return view


def queue_length(queue: str) -> int | None:
    """Messages waiting in ``queue``; None when the broker cannot tell."""
    try:
        with app.connection_for_read() as conn:
            return conn.default_channel.queue_declare(queue=queue, passive=True).message_count
    except ChannelError as exc:
        # Redis drops an empty list, so an empty queue may not "exist".
        if "NOT_FOUND" in str(exc):
            return 0
        log.warning("cannot read the length of queue %s: %s", queue, exc)
        return None
    except Exception as exc:  # noqa: BLE001 - an unknown answer must not look empty
        log.warning("cannot read the length of queue %s: %s", queue, exc)
        return None
