"""Celery beat for windfarm-etl: ``celery -A scheduler beat``.

The schedule lives on the shared Celery app; its tasks run on the workers.
"""

from scheduler.schedule import beat_schedule
from windfarm.config import get_settings
from workers.celery_app import app

app.conf.beat_schedule = beat_schedule(get_settings())

__all__ = ["app"]
