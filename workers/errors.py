"""What can go wrong while processing a slice, and what to do about it.

::

    EtlError                    anything the slice pipeline raises on purpose
    ├── TransientError          retry later, with backoff: it may well work then
    │   ├── SourceUnavailable   API unreachable, timed out, HTTP 5xx or 429
    │   └── TargetUnavailable   target database down or connection lost
    └── PermanentError          retrying cannot help: fail the slice at once
        ├── SourceRejected      API answered HTTP 4xx (other than 429)
        └── BadPayload          API answered 2xx with something that is not slice data

Messages are meant for ``GET /jobs/{id}``: they name the failure in a sentence
and never carry credentials or SQL.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

MAX_MESSAGE_CHARS = 500


class EtlError(Exception):
    """Base of the errors the slice pipeline raises on purpose."""


class TransientError(EtlError):
    """A failure that may go away: retry with backoff, up to a bound."""


class PermanentError(EtlError):
    """A failure that retrying cannot fix: record it on the slice and stop."""


class SourceUnavailable(TransientError):
    """The API could not be reached, timed out, or answered 5xx/429."""


class TargetUnavailable(TransientError):
    """The target database could not be reached or dropped the connection."""


class SourceRejected(PermanentError):
    """The API refused the request (HTTP 4xx other than 429)."""


class BadPayload(PermanentError):
    """The API answered successfully but not with rows of the slice."""


def describe(exc: BaseException) -> str:
    """A one-line description of ``exc`` fit for a slice's error column.

    SQLAlchemy errors carry the statement and its parameters after the first
    line; only the driver's first line is kept.
    """
    if isinstance(exc, EtlError):
        text = str(exc)
    elif isinstance(exc, DBAPIError) and exc.orig is not None:
        text = f"{type(exc.orig).__name__}: {str(exc.orig).strip()}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:MAX_MESSAGE_CHARS]
