"""Shared pieces of windfarm-etl: settings, database engines, the target schema,
the bookkeeping, the Celery app definition and the producer side."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("windfarm-etl")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
