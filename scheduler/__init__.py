"""Celery beat for windfarm-etl: ``celery -A scheduler beat``.

Beat uses the one app and its schedule (``windfarm/queue.py``) and imports no
task code: it sends the scheduled tasks by name, and the workers run them in
the priority lane. At start it also sends the hourly task once, so a fresh
beat (a new container, no schedule file) catches up at once.
"""

from __future__ import annotations

import logging

from celery.signals import beat_init

from windfarm.queue import HOURLY_TASK, app

__all__ = ["app"]


@beat_init.connect
def _catch_up_at_start(**_: object) -> None:
    try:
        app.send_task(HOURLY_TASK)
    except Exception as exc:  # noqa: BLE001 - the next hourly tick catches up instead
        logging.getLogger(__name__).warning(
            "could not send the catch-up at start: %s", type(exc).__name__
        )
