"""One engine per database and process, made lazily.

Celery's prefork pool and uvicorn's workers fork after import; an engine built
before the fork would share sockets between processes. Engines here are keyed
by process id, so a child builds its own on first use.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from windfarm.config import get_settings

_engines: dict[tuple[int, str], Engine] = {}


def engine_for(url: str) -> Engine:
    """The pooled engine of this process for ``url``."""
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        engine = create_engine(
            url,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=10,
            connect_args={"connect_timeout": 5},
        )
        _engines[key] = engine
    return engine


def source_engine() -> Engine:
    return engine_for(get_settings().source_database_url)


def target_engine() -> Engine:
    return engine_for(get_settings().target_database_url)


def dispose_engines() -> None:
    """Forget every engine (after settings change, or in a freshly forked child)."""
    for (pid, _), engine in list(_engines.items()):
        if pid == os.getpid():
            engine.dispose()
        else:
            engine.dispose(close=False)
    _engines.clear()


@contextmanager
def target_session() -> Iterator[Session]:
    """A session on the target database that commits on success."""
    with sessionmaker(target_engine(), expire_on_commit=False).begin() as session:
        yield session


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
