"""One engine per database and process, made lazily.

Celery's prefork pool and uvicorn's workers fork after import; an engine built
before the fork would share sockets between processes. Engines here are keyed
by process id, so a child builds its own on first use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from windfarm.config import get_settings

T = TypeVar("T")

_engines: dict[tuple[int, str, bool, bool], Engine] = {}


def engine_for(url: str, *, autocommit: bool = False, pre_ping: bool = False) -> Engine:
    """The pooled engine of this process for ``url``.

    With ``autocommit`` the engine's connections never open a transaction:
    each statement (or each multi-statement string, which PostgreSQL runs as
    one implicit transaction) commits on its own, in one round trip instead
    of BEGIN, statement, COMMIT. It has a pool of its own, so connections
    are not switched between modes on every checkout.

    Without ``pre_ping`` (the workers' hot path) a connection that died is
    invalidated, with the rest of the pool, on its first error, and callers
    treat that error as transient; with it, every checkout costs a round trip
    but a request never meets a connection a database restart killed.
    """
    key = (os.getpid(), url, autocommit, pre_ping)
    engine = _engines.get(key)
    if engine is None:
        engine = create_engine(
            url,
            pool_size=5,
            max_overflow=10,
            pool_recycle=1800,
            pool_pre_ping=pre_ping,
            connect_args={"connect_timeout": 5},
            **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
        )
        _engines[key] = engine
    return engine


def source_engine() -> Engine:
    return engine_for(get_settings().source_database_url)


def target_engine() -> Engine:
    return engine_for(get_settings().target_database_url)


def source_reader() -> Engine:
    """The API's engine for reads of the source: autocommit, not pre-pinged
    (read through :func:`read_with_retry`)."""
    return engine_for(get_settings().source_database_url, autocommit=True)


def read_with_retry(engine: Engine, read: Callable[[Connection], T]) -> T:
    """``read(conn)`` on a pooled connection of ``engine``, and once more if that
    connection had died: a database restart kills every pooled connection, and
    SQLAlchemy discards them all on the first error, so the second try connects
    anew. Cheaper than a pre-ping, which costs a round trip on every checkout.
    For reads only, which may run twice."""
    try:
        with engine.connect() as conn:
            return read(conn)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    with engine.connect() as conn:
        return read(conn)


def first_row(conn: Connection, sql: str, params: Mapping[str, Any]) -> tuple | None:
    """``conn.exec_driver_sql(sql, params).first()``, without the result object.

    For the statements every slice runs (its batches in the worker, its read
    in the API): SQLAlchemy builds a result (and its column metadata) around
    every statement, which costs about as much client CPU as the round trip
    itself. The statement runs on the DBAPI
    cursor of ``conn``; an error is raised as ``exec_driver_sql`` raises it
    (SQLAlchemy's own ``DBAPIError`` subclass, ``connection_invalidated``
    set when the connection died), and a dead connection is invalidated, so
    the pool never hands it out again.
    """
    dbapi_conn = conn.connection.dbapi_connection
    assert dbapi_conn is not None
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(sql, params)
        return cursor.fetchone() if cursor.description is not None else None
    except conn.dialect.loaded_dbapi.Error as exc:
        dead = conn.dialect.is_disconnect(exc, dbapi_conn, cursor)
        if dead:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql,
            params,
            exc,
            conn.dialect.loaded_dbapi.Error,
            connection_invalidated=dead,
            dialect=conn.dialect,
        ) from exc
    finally:
        with suppress(Exception):  # a cursor of a connection that died may refuse to close
            cursor.close()


def reachable(engine: Engine) -> bool:
    """Whether the database answers a trivial query; raises nothing."""
    try:
        read_with_retry(engine, lambda conn: conn.execute(text("SELECT 1")))
        return True
    except Exception:  # noqa: BLE001 - any failure means unreachable
        return False


def autocommit(engine: Engine) -> Engine:
    """The autocommit twin of ``engine`` (see :func:`engine_for`)."""
    return engine_for(engine.url.render_as_string(hide_password=False), autocommit=True)


def dispose_engines() -> None:
    """Forget every engine (after settings change, or in a freshly forked child)."""
    for (pid, *_), engine in list(_engines.items()):
        if pid == os.getpid():
            engine.dispose()
        else:
            engine.dispose(close=False)
    _engines.clear()


def _database_name(url: str) -> str:
    name = make_url(url).database
    if not name:
        raise ValueError("the database URL names no database")
    return name


def ensure_database(url: str) -> bool:
    """Create the database ``url`` names if it does not exist; True when created."""
    parsed = make_url(url)
    name = _database_name(url)
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
            quoted = conn.dialect.identifier_preparer.quote(_database_name(url))
            conn.execute(text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
    finally:
        admin.dispose()
