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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport.redis import Channel as RedisChannel
from kombu.utils.uuid import uuid
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
            # Declared once for the batch, not per message: RabbitMQ drops a
            # message for a queue that nobody has declared yet.
            producer.maybe_declare(app.amqp.queues[queue])
            lineage = _lineage()
            for i in range(0, len(starts), CHUNK):
                chunk = starts[i : i + CHUNK]
                with _pipelined(producer):
                    for start in chunk:
                        _send_slice(producer, queue, job_id, start.isoformat(), lineage)
                sent += len(chunk)
    except Exception as exc:  # noqa: BLE001 - any broker failure: the database keeps the rest
        log.warning(
            "job %s: broker refused slices (%s: %s); %d of %d sent, "
            "the rest wait for the reconciler",
            job_id,
            type(exc).__name__,
            exc,
            sent,
            len(starts),
            extra={"job_id": job_id},
        )
    return sent


def _lineage() -> dict[str, str | None]:
    """The root and parent ids ``send_task`` gives a message sent from a task
    (beat's hourly, daily and reconcile tasks send slices): the task's own."""
    parent = app.current_worker_task
    if parent is None:
        return {"root_id": None, "parent_id": None}  # the message is its own root
    return {"root_id": parent.request.root_id or parent.request.id, "parent_id": parent.request.id}


def _send_slice(
    producer: Any, queue: str, job_id: int, hour: str, lineage: dict[str, str | None]
) -> None:
    """The message ``app.send_task(SLICE_TASK, (job_id, hour))`` sends, without
    what it does for every message that a slice never needs: routing (the lane
    is given), an ``AsyncResult`` (nobody waits for a slice's result), a
    declaration of the queue (once per batch instead), the args' repr. Publishing
    a year takes about a third of the CPU it took through ``send_task``."""
    amqp = app.amqp
    message = amqp.create_task_message(
        uuid(),
        SLICE_TASK,
        (job_id, hour),
        {},
        reply_to=app.thread_oid,
        **lineage,
        ignore_result=True,
        argsrepr=f"({job_id}, '{hour}')",
        kwargsrepr="{}",
    )
    amqp.send_task_message(
        producer, SLICE_TASK, message, queue=queue, routing_key=queue, retry=False, declare=[]
    )


@contextmanager
def _pipelined(producer: Any) -> Iterator[None]:
    """With Redis, send the chunk's messages in one round trip: kombu's Redis
    channel pushes each message on a client it asks ``conn_or_acquire`` for
    (a new client object per message, one round trip each); here it gets one
    pipeline, executed on exit. A failure there fails the whole chunk, which
    then counts as unsent. Other brokers publish message by message."""
    channel = producer.channel
    if not isinstance(channel, RedisChannel):
        yield
        return
    pipe = channel._create_client().pipeline(transaction=False)
    channel.conn_or_acquire = lambda client=None: nullcontext(pipe)
    try:
        yield
    finally:
        del channel.conn_or_acquire  # the class's method again
    pipe.execute()


def send_slices(job_id: int, starts: Sequence[datetime], *, priority: bool = False) -> int:
    """Publish slices already recorded as sent (:func:`jobs.store_job`,
    :func:`jobs.mark_sent`) and record the ones the broker refused; how many went."""
    sent = publish(job_id, starts, priority=priority)
    if sent < len(starts):
        try:
            with target_engine().begin() as conn:
                jobs.mark_unsent(conn, job_id, list(starts[sent:]))
        except Exception as exc:  # noqa: BLE001 - then they look lost, and are resent later
            log.warning(
                "job %s: could not record %d unsent slices: %s",
                job_id,
                len(starts) - sent,
                type(exc).__name__,
                extra={"job_id": job_id},
            )
    return sent


def _now(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    fn(*args, **kwargs)


class TooManyOpenSlices(Exception):
    """Storing a job would take the open slices past ``ETL_MAX_OPEN_SLICES``."""

    def __init__(self, open_slices: int, limit: int) -> None:
        super().__init__(
            f"{open_slices} slices are open, and the job would take them past "
            f"{limit} (ETL_MAX_OPEN_SLICES); try again once some have ended"
        )
        self.open_slices = open_slices
        self.limit = limit


@dataclass(frozen=True)
class Submitted:
    job: jobs.JobView
    created: bool  # False: an open job already covered the hours (``reuse_open``)


def submit_job(
    *,
    origin: str,
    hours: list[datetime],
    priority: bool = False,
    allow_empty: bool = False,
    dedupe_key: str | None = None,
    only_missing: bool = False,
    reuse_open: bool = False,
    max_open_slices: int | None = None,
    defer: Callable[..., Any] = _now,
) -> Submitted | None:
    """Store a job of the slices ``hours`` (committed, its connection given back),
    then send them through ``defer(send_slices, ...)``: at once by default, or
    later (the API passes its background tasks). None when a job with
    ``dedupe_key`` exists or no hour is left.

    Decided under a lock that concurrent callers take in turn:

    - ``only_missing`` keeps only the hours with neither a succeeded nor an
      open slice, so two schedulers fill a gap once;
    - ``reuse_open`` returns the open job of the same origin (and
      ``allow_empty``) that already covers the hours instead of a new one;
    - ``max_open_slices`` refuses (:class:`TooManyOpenSlices`) a job that would
      take the open slices past it.
    """
    with target_engine().begin() as conn:
        if only_missing or reuse_open or max_open_slices is not None:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('windfarm-etl submit'))"))
        if only_missing:
            hours = jobs.missing_hours(conn, hours)
        if not hours:
            return None
        if reuse_open and (
            covering := jobs.open_job_covering(
                conn, origin=origin, hours=hours, allow_empty=allow_empty
            )
        ):
            found = jobs.get_job(conn, covering)
            assert found is not None  # read under the lock that guards its creation
            return Submitted(found, created=False)
        if max_open_slices is not None:
            open_now = jobs.open_slices(conn)
            if open_now + len(hours) > max_open_slices:
                raise TooManyOpenSlices(open_now, max_open_slices)
        job_id = jobs.store_job(
            conn,
            origin=origin,
            hours=hours,
            priority=priority,
            allow_empty=allow_empty,
            dedupe_key=dedupe_key,
        )
        view = jobs.get_job(conn, job_id) if job_id is not None else None
    if view is None:
        return None
    log.info(
        "job %d stored (%s): %d slice(s) from %s to %s",
        view.id,
        origin,
        len(hours),
        view.first_hour.isoformat(),
        view.last_hour.isoformat(),
        extra={"job_id": view.id, "origin": str(origin), "slices_total": len(hours)},
    )
    defer(send_slices, view.id, hours, priority=priority)
    return Submitted(view, created=True)


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
