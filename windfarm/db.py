"""One engine per database and process, made lazily.

Celery's prefork pool and uvicorn's workers fork after import; an engine built
before the fork would share sockets between processes. Engines here are keyed
by process id, so a child builds its own on first use.
"""

from __future__ import annotations

import os

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from windfarm.config import get_settings

_engines: dict[tuple[int, str, bool], Engine] = {}


def engine_for(url: str, *, autocommit: bool = False) -> Engine:
    """The pooled engine of this process for ``url``.

    With ``autocommit`` the engine's connections never open a transaction:
    each statement (or each multi-statement string, which PostgreSQL runs as
    one implicit transaction) commits on its own, in one round trip instead
    of BEGIN, statement, COMMIT. It has a pool of its own, so connections
    are not switched between modes on every checkout.
    """
    key = (os.getpid(), url, autocommit)
    engine = _engines.get(key)
    if engine is None:
        # No pre-ping: it would cost a round trip on every checkout of the hot
        # path. A connection that died is invalidated (with the rest of the
        # pool) on its first error; callers treat that error as transient.
        engine = create_engine(
            url,
            pool_size=5,
            max_overflow=10,
            pool_recycle=1800,
            connect_args={"connect_timeout": 5},
            **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
        )
        _engines[key] = engine
    return engine


def source_engine() -> Engine:
    return engine_for(get_settings().source_database_url)


def target_engine() -> Engine:
    return engine_for(get_settings().target_database_url)


def autocommit(engine: Engine) -> Engine:
    """The autocommit twin of ``engine`` (see :func:`engine_for`)."""
    return engine_for(engine.url.render_as_string(hide_password=False), autocommit=True)


def dispose_engines() -> None:
    """Forget every engine (after settings change, or in a freshly forked child)."""
    for (pid, _, _), engine in list(_engines.items()):
        if pid == os.getpid():
            engine.dispose()
        else:
            engine.dispose(close=False)
    _engines.clear()


def ensure_database(url: str) -> bool:
    """Create the database ``url`` names if it does not exist; True when created."""
    parsed = make_url(url)
    name = parsed.database
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            if exists:
                return False
            quoted = conn.dialect.identifier_preparer.quote(name)
            try:
                conn.execute(text(f"CREATE DATABASE {quoted}"))
            except DBAPIError:
                # Another process may have created it meanwhile.
                if conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}):
                    return False
                raise
            return True
    finally:
        admin.dispose()


def drop_database(url: str) -> None:
    """Drop the database ``url`` names, closing its connections (tests use this)."""
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            quoted = conn.dialect.identifier_preparer.quote(parsed.database)
            conn.execute(text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
    finally:
        admin.dispose()
