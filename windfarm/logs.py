"""One logging setup for every process: the API, the workers, beat and the CLI.

- ``LOG_LEVEL`` (default ``INFO``): ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``.
- ``LOG_FORMAT`` (default ``text``): ``text`` writes one line per record, its
  fields at the end (``[job_id=3 slice=2025-12-05T03:00:00]``); ``json`` writes
  one JSON object per line (python-json-logger), the fields as keys.

What each level shows. INFO: what happened to jobs (a line when one is
stored, one when it ends) and the processes' own start and stop; WARNING:
everything unusual (a retry, a wait, a failed slice, a lost message); ERROR:
bugs. DEBUG adds a line per slice and the per-request lines of the libraries
(Celery's "task received/succeeded", uvicorn's access log of answers below
400). A 10-day backfill at INFO logs a couple of lines, not thousands.

Lines about a slice carry its ``job_id`` and ``slice`` as fields: the code
that works on a slice runs inside :func:`slice_context`, and a filter on the
handler adds the fields to every record logged meanwhile, by the project's
code, Celery or a library alike. Nothing formats them into a message.

Processes use it so:

- the API: :func:`setup_logging` when the app is built (uvicorn's own loggers
  write through the same handler, at ``LOG_LEVEL``: ``--log-level`` no longer
  decides);
- the workers and beat: :func:`use_for_celery`, which connects Celery's
  ``setup_logging`` signal, so Celery leaves logging to this module
  (``worker_hijack_root_logger`` then has nothing to hijack, and ``-l`` only
  decides whether the worker's banner lists the tasks);
- the CLI: :func:`setup_logging` with its own level (errors only, or ``-v``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import datetime
from typing import Any

from windfarm.config import get_settings

FIELDS = ("job_id", "slice")

# Known noise, quieted here and nowhere else.
# Always: a line per HTTP request a worker makes (httpx, httpcore), and
# Flower's warnings while the workers it inspects at start have not answered.
QUIET = {"httpx": logging.WARNING, "httpcore": logging.WARNING, "flower.inspector": logging.ERROR}
# Above DEBUG: Celery's "Task ... received" line of every task.
QUIET_BUT_IN_DEBUG = {"celery.worker.strategy": logging.WARNING}

_context: ContextVar[dict[str, Any] | None] = ContextVar("windfarm_log_context", default=None)


def _setting(name: str, default: str) -> str:
    return str(getattr(get_settings(), name) or default)


# --- Context: the slice a process works on ------------------------------------------------


def bind(**fields: Any) -> Token:
    """Add ``fields`` to every record logged in this context until :func:`unbind`."""
    return _context.set({**(_context.get() or {}), **fields})


def unbind(token: Token) -> None:
    _context.reset(token)


def clear() -> None:
    """Drop every field of the context (a worker between two tasks)."""
    _context.set(None)


@contextmanager
def slice_context(job_id: int, slice_start: str | datetime) -> Iterator[None]:
    """Every record logged inside carries ``job_id`` and ``slice`` (an ISO hour)."""
    token = bind(
        job_id=job_id,
        slice=slice_start if isinstance(slice_start, str) else slice_start.isoformat(),
    )
    try:
        yield
    finally:
        unbind(token)


class ContextFilter(logging.Filter):
    """Puts the context's fields on each record that does not carry them already."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_context.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


# --- Formats --------------------------------------------------------------------------------


def _utc_iso(formatter: logging.Formatter) -> logging.Formatter:
    """Timestamps like ``2025-12-05T03:00:00.123Z``: the project's times are UTC."""
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


class TextFormatter(logging.Formatter):
    """``time LEVEL process logger: message [job_id=.. slice=..]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = " ".join(
            f"{name}={getattr(record, name)}" for name in FIELDS if hasattr(record, name)
        )
        return f"{line} [{fields}]" if fields else line


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``LOG_FORMAT`` ``fmt``: ``json``, or else ``text``."""
    return json_formatter() if fmt == "json" else _utc_iso(TextFormatter())


def json_formatter() -> logging.Formatter:
    """One JSON object per record: ``time``, ``level``, ``logger``, ``process``,
    ``message``, the fields of the record's ``extra`` and context, and
    ``exc_info`` (the traceback) when there is one."""
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    return _utc_iso(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(processName)s %(message)s",
            rename_fields={
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "processName": "process",
            },
            # Celery's and uvicorn's extras repeat the message (uvicorn's with colours).
            reserved_attrs=[*RESERVED_ATTRS, "data", "color_message"],
        )
    )


# --- Setup ------------------------------------------------------------------------------------


class _Ours(logging.StreamHandler):
    """The handler :func:`setup_logging` installs (found and replaced on a second
    call). It writes to whatever ``sys.stderr`` is when a record comes, as
    ``logging.lastResort`` does: under pytest, the current test's capture."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _: object) -> None:
        pass


def setup_logging(*, level: str | int | None = None, fmt: str | None = None) -> None:
    """Log to stderr at ``level`` (default ``LOG_LEVEL``) in ``fmt`` (default
    ``LOG_FORMAT``). Safe to call again: it replaces only its own handler, so
    handlers that others put on the root logger (pytest's) stay."""
    level = _level(level if level is not None else _setting("log_level", "INFO"))
    fmt = fmt or _setting("log_format", "text")
    handler = _Ours()
    handler.setFormatter(formatter(fmt))
    handler.addFilter(ContextFilter())
    handler.setLevel(level)
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _Ours)] + [handler]
    root.setLevel(level)
    # uvicorn's loggers write through this handler, at this level (not --log-level's).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    _add_once(logging.getLogger("uvicorn.access"), _AccessFilter())
    quiet_noise(level)
    logging.captureWarnings(True)


def _level(value: str | int) -> int:
    if isinstance(value, int):
        return value
    try:
        return logging.getLevelNamesMapping()[value.upper()]
    except KeyError:
        raise ValueError(
            f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, not {value!r}"
        ) from None


def quiet_noise(level: int = logging.INFO) -> None:
    """Quiet the known noise (:data:`QUIET`, and above DEBUG :data:`QUIET_BUT_IN_DEBUG`)."""
    for name, quiet in QUIET.items():
        logging.getLogger(name).setLevel(quiet)
    for name, quiet in QUIET_BUT_IN_DEBUG.items():
        logging.getLogger(name).setLevel(quiet if level > logging.DEBUG else logging.NOTSET)


def _add_once(logger: logging.Logger, flt: logging.Filter) -> None:
    if not any(type(f) is type(flt) for f in logger.filters):
        logger.addFilter(flt)


def _debug_enabled() -> bool:
    return any(
        isinstance(h, _Ours) and h.level <= logging.DEBUG for h in logging.getLogger().handlers
    )


def access_line_wanted(status: object) -> bool:
    """Whether an access line for an answer of ``status`` is logged: 400 and above
    always, the others only at DEBUG (their counts and latencies are on ``/metrics``)."""
    return not isinstance(status, int) or status >= 400 or _debug_enabled()


class _AccessFilter(logging.Filter):
    """uvicorn's access log: the lines :func:`access_line_wanted` wants. In JSON,
    the request's ``method``, ``path`` and ``status`` become keys."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not (isinstance(args, tuple) and len(args) == 5):
            return True  # not uvicorn's access line as we know it: let it through
        _, method, path, _, status = args
        record.method, record.path, record.status = method, path, status
        return access_line_wanted(status)


class _NoSuccessLines(logging.Filter):
    """Celery's "Task ... succeeded in ..." line of every task, above DEBUG."""

    def __init__(self, success_format: str) -> None:
        super().__init__()
        self.success_format = success_format

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != self.success_format or _debug_enabled()


def _celery_setup(**_: object) -> None:
    """Celery's ``setup_logging`` signal: this module's setup instead of Celery's."""
    from celery.app.trace import LOG_SUCCESS

    setup_logging()
    _add_once(logging.getLogger("celery.app.trace"), _NoSuccessLines(LOG_SUCCESS))


def use_for_celery() -> None:
    """Make the Celery processes that load this (worker, beat) log through
    :func:`setup_logging`; call it where the process's app is loaded."""
    from celery.signals import setup_logging as celery_setup_logging

    celery_setup_logging.connect(_celery_setup, weak=False, dispatch_uid="windfarm.logs")
