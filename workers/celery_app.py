"""The Celery app of windfarm-etl; every task module and ``celery -A workers`` use it.

Reliability choices (see the project's PITFALLS notes):

- late acks + requeue on worker loss + prefetch 1: a message leaves the broker
  only once its task has finished, and a crash strands at most the tasks
  actually running;
- ``visibility_timeout`` 600 s: Redis hands an unacknowledged message to
  another worker after it. It must exceed the longest a message is held
  before its ack: the largest retry countdown (``ETL_RETRY_BACKOFF_MAX_S``,
  60 s by default, capped below) plus the hard time limit (120 s);
- short socket timeouts, so that sending to a dead broker fails in seconds
  and the database (not the broker) keeps the work for the reconciler.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_init, worker_process_init

from windfarm.config import get_settings

TASK_SOFT_TIME_LIMIT_S = 90
TASK_TIME_LIMIT_S = 120
VISIBILITY_TIMEOUT_S = 600
# Retry countdowns never exceed this, whatever ETL_RETRY_BACKOFF_MAX_S says,
# so a waiting retry is never redelivered as if its worker had died.
MAX_RETRY_DELAY_S = VISIBILITY_TIMEOUT_S - TASK_TIME_LIMIT_S - 60

_settings = get_settings()

app = Celery("windfarm", include=["workers.tasks", "scheduler.tasks"])
app.conf.update(
    broker_url=_settings.celery_broker_url,
    result_backend=_settings.celery_result_backend,
    task_default_queue=_settings.etl_queue,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # Many short tasks and no rate limits: skip the per-task bucket check.
    worker_disable_rate_limits=True,
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_ignore_result=True,
    timezone="UTC",
    enable_utc=True,
    task_soft_time_limit=TASK_SOFT_TIME_LIMIT_S,
    task_time_limit=TASK_TIME_LIMIT_S,
    broker_connection_retry_on_startup=True,
    broker_connection_timeout=3,
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        "socket_connect_timeout": 3,
        "socket_timeout": 5,
        # Publishing gives up after one quick reconnect instead of retrying on.
        "max_retries": 1,
        "interval_start": 0,
        "interval_step": 0.5,
    },
    worker_hijack_root_logger=True,
)
# One line per request at INFO would double the log of every slice.
logging.getLogger("httpx").setLevel(logging.WARNING)


@worker_init.connect
def _prepare_target(**_: object) -> None:
    """Create the target schema once per worker start; the API does the same."""
    from windfarm.db import dispose_engines, target_engine
    from windfarm.models import prepare_target

    try:
        prepare_target(target_engine())
    except Exception as exc:  # noqa: BLE001 - tasks retry until the database answers
        logging.getLogger(__name__).warning(
            "target schema not checked at start-up: %s", type(exc).__name__
        )
    finally:
        dispose_engines()


@worker_process_init.connect
def _fresh_process(**_: object) -> None:
    """A forked pool child builds its own engines and HTTP client; the client
    (TLS context and all) now, so that the child's first slice does not wait for it."""
    from windfarm.db import dispose_engines
    from workers.source import close_clients, http_client

    dispose_engines()
    close_clients()
    http_client()
