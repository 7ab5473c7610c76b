"""The beat schedule, from ``ETL_HOURLY_CRON``, ``ETL_DAILY_CRON`` and
``ETL_RECONCILE_EVERY_S``. Crontabs are read in UTC (the app's timezone)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import crontab

from windfarm.config import Settings


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
    reconcile_every = settings.etl_reconcile_every_s
    return {
        "etl-hourly": {
            "task": "scheduler.enqueue_hourly",
            "schedule": parse_cron(settings.etl_hourly_cron),
        },
        "etl-daily": {
            "task": "scheduler.enqueue_daily",
            "schedule": parse_cron(settings.etl_daily_cron),
        },
        "etl-reconcile": {
            "task": "scheduler.reconcile",
            "schedule": timedelta(seconds=reconcile_every),
            # A reconcile that waited longer than its period is superseded by the next.
            "options": {"expires": reconcile_every},
        },
    }
