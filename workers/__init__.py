"""Celery workers of windfarm-etl: ``celery -A workers worker``."""

from workers.celery_app import app

__all__ = ["app"]
