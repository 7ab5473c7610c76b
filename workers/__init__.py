"""Celery workers of windfarm-etl: ``celery -A workers worker``.

The Celery app is loaded on first use of ``workers.app``, so that the
in-process CLI (``python -m workers.etl --date ...``) starts without it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from workers.celery_app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
