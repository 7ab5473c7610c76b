"""The one Celery app definition: broker, lanes, reliability settings, beat schedule.

Every process uses this app, and each imports only its own side of it: the
API and the CLI publish by task name (``windfarm/dispatch.py``), beat sends
the schedule below (``celery -A scheduler beat``), and only the workers
import task code (``celery -A workers worker``). Importing this module loads
Celery and kombu, never numpy or a task.

Two lanes, both consumed by every worker (Redis serves a worker's queues in
turn, so neither waits for the other to drain):

- ``ETL_QUEUE`` (``etl``): slices of jobs posted to the API or the CLI, the backfill;
- ``ETL_QUEUE.priority``: the scheduler's control tasks and the slices of
  scheduled jobs (hourly, daily, catch-up), which must keep their cadence
  behind any backfill.

Reliability choices (see the project's PITFALLS notes):

- late acks + requeue on worker loss + prefetch 1: a message leaves the broker
  only once its task has finished, and a crash strands at most the tasks
  actually running;
- ``visibility_timeout`` 600 s (Redis only; RabbitMQ redelivers a dead
  connection's messages at once): Redis hands an unacknowledged message to
  another worker after it. It must exceed the longest a message is held
  before its ack: the largest retry countdown (:data:`MAX_RETRY_DELAY_S`)
  plus the hard time limit;
- short socket timeouts, so that sending to a dead broker fails in seconds
  and the database (not the broker) keeps the work for the reconciler.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery
from celery.schedules import crontab
from kombu import Exchange, Queue

from windfarm import broker, logs
from windfarm.config import Settings, get_settings

SLICE_TASK = "workers.process_slice"
HOURLY_TASK = "scheduler.enqueue_hourly"
DAILY_TASK = "scheduler.enqueue_daily"
RECONCILE_TASK = "scheduler.reconcile"

TASK_SOFT_TIME_LIMIT_S = 90
TASK_TIME_LIMIT_S = 120
VISIBILITY_TIMEOUT_S = 600
# Retry countdowns never exceed this, whatever ETL_RETRY_BACKOFF_MAX_S says,
# so a waiting retry is never redelivered as if its worker had died.
MAX_RETRY_DELAY_S = VISIBILITY_TIMEOUT_S - TASK_TIME_LIMIT_S - 60


def lane(settings: Settings, *, priority: bool) -> str:
    """The queue of a job's slices."""
    return settings.etl_priority_queue if priority else settings.etl_queue


def parse_cron(expression: str) -> crontab:
    """A Celery crontab from a 5-field crontab expression."""
    minute, hour, day_of_month, month_of_year, day_of_week = expression.split()
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The schedule beat sends, from ``ETL_HOURLY_CRON``, ``ETL_DAILY_CRON`` and
    ``ETL_RECONCILE_EVERY_S``; crontabs are read in UTC (the app's timezone)."""
    reconcile_every = settings.etl_reconcile_every_s
    return {
        "etl-hourly": {"task": HOURLY_TASK, "schedule": parse_cron(settings.etl_hourly_cron)},
        "etl-daily": {"task": DAILY_TASK, "schedule": parse_cron(settings.etl_daily_cron)},
        "etl-reconcile": {
            "task": RECONCILE_TASK,
            "schedule": timedelta(seconds=reconcile_every),
            # A reconcile that waited longer than its period is superseded by the next.
            "options": {"expires": reconcile_every},
        },
    }


REDIS_SCHEMES = frozenset({"redis", "rediss", "redis+socket", "sentinel"})


def transport_options(broker_url: str) -> dict[str, Any]:
    """The broker's transport options: those of every broker, and Redis's own.

    kombu hands unknown options to the AMQP client, which ignores them, so the
    Redis ones are given to Redis only. RabbitMQ needs no counterpart of them:
    it redelivers a message as soon as the connection that held it closes (no
    ``visibility_timeout``), and the AMQP connect and handshake already wait at
    most ``broker_connection_timeout``. Its own bound on holding a message
    unacknowledged, the server's ``consumer_timeout`` (30 min by default), is
    far above the longest hold here (:data:`MAX_RETRY_DELAY_S` plus a run).
    """
    options: dict[str, Any] = {
        # Publishing gives up after one quick reconnect instead of retrying on.
        "max_retries": 1,
        "interval_start": 0,
        "interval_step": 0.5,
    }
    if broker_url.partition("://")[0].lower() in REDIS_SCHEMES:
        options.update(
            visibility_timeout=VISIBILITY_TIMEOUT_S, socket_connect_timeout=3, socket_timeout=5
        )
    return options


def _queue(name: str) -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def configure(app: Celery, settings: Settings) -> None:
    """Put ``settings`` into ``app``'s configuration (done once, for :data:`app`)."""
    bulk, priority = settings.etl_queue, settings.etl_priority_queue
    app.conf.update(
        broker_url=settings.celery_broker_url,
        result_backend=settings.celery_result_backend,
        task_queues=(_queue(bulk), _queue(priority)),
        task_default_queue=bulk,
        task_default_exchange=bulk,
        task_default_routing_key=bulk,
        task_routes={"scheduler.*": {"queue": priority, "routing_key": priority}},
        beat_schedule=beat_schedule(settings),
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Many short tasks and no rate limits: skip the per-task bucket check.
        worker_disable_rate_limits=True,
        # Task events cost three Redis commands a slice: workers send them only
        # while a monitor asks (Flower enables them remotely every few seconds),
        # and producers never send "task-sent" (a second message per slice).
        worker_send_task_events=False,
        task_send_sent_event=False,
        # Nobody reads a slice task's return value: no result is stored.
        task_ignore_result=True,
        timezone="UTC",
        enable_utc=True,
        task_soft_time_limit=TASK_SOFT_TIME_LIMIT_S,
        task_time_limit=TASK_TIME_LIMIT_S,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        broker_transport_options=transport_options(settings.celery_broker_url),
        worker_hijack_root_logger=True,
    )


# kombu's Redis transport with one client per connection pool (windfarm/broker.py).
broker.use_for_redis_urls()
app = Celery("windfarm")
configure(app, get_settings())
# Every Celery process (worker, beat, Flower) logs through windfarm/logs.py.
logs.use_for_celery()
logs.quiet_noise()
