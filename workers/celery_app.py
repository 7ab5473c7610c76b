"""The worker side of the Celery app: ``celery -A workers worker``.

The app itself is defined once, in ``windfarm/queue.py``; this module adds
what only workers need: the tasks (slices, and the scheduler's control tasks
that beat sends), the logging setup (``windfarm/logs.py``), the node's
metrics (``workers/metrics.py``) and the per-process set-up of a prefork pool.
"""

from __future__ import annotations

import logging

from celery.signals import (
    celeryd_after_setup,
    worker_init,
    worker_process_init,
    worker_shutdown,
)

import scheduler.tasks  # noqa: F401 - registers the control tasks
import workers.tasks  # noqa: F401 - registers the slice task
from windfarm.config import get_settings
from windfarm.queue import app
from workers import metrics

__all__ = ["app"]


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


@celeryd_after_setup.connect
def _serve_metrics(sender: str, **_: object) -> None:
    """Before the pool forks: the node's metrics, on ETL_METRICS_PORT."""
    metrics.serve(sender, port=get_settings().etl_metrics_port)


@worker_shutdown.connect
def _stop_metrics(**_: object) -> None:
    metrics.stop()


@worker_process_init.connect
def _fresh_process(**_: object) -> None:
    """A forked pool child builds its own engines and HTTP client; the client
    (TLS context and all) now, so that the child's first slice does not wait for it.
    It closes the metrics server's socket it inherited: only the main process serves."""
    from windfarm.db import dispose_engines
    from workers.source import close_clients, http_client

    metrics.forget_server()
    dispose_engines()
    close_clients()
    http_client()
