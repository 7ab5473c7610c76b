"""The worker side of the Celery app: ``celery -A workers worker``.

The app itself is defined once, in ``windfarm/queue.py``; this module adds
what only workers need: the tasks (slices, and the scheduler's control tasks
that beat sends) and the per-process set-up of a prefork pool.
"""

from __future__ import annotations

import logging

from celery.signals import worker_init, worker_process_init

import scheduler.tasks  # noqa: F401 - registers the control tasks
import workers.tasks  # noqa: F401 - registers the slice task
from windfarm.queue import app

__all__ = ["app"]

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
