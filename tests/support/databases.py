"""The run's PostgreSQL and Redis, a test's databases, and the in-process API client.

Every database a test run creates is named ``wf_<RUN_ID>_...``: it never
touches ``source_db``/``target_db`` or what an earlier run left behind.
``tests/conftest.py`` imports the constants below before any project module
reads the settings, so this module imports project modules only inside its
functions.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
RUN_ID = uuid.uuid4().hex[:10]


@dataclass(frozen=True)
class Databases:
    source_url: str
    target_url: str


def current_databases() -> Databases:
    """The databases the settings name now."""
    return Databases(os.environ["SOURCE_DATABASE_URL"], os.environ["TARGET_DATABASE_URL"])


def use_databases(dbs: Databases) -> None:
    """Make ``dbs`` current: the settings (and processes started after) name them."""
    from windfarm.config import get_settings
    from windfarm.db import dispose_engines

    os.environ["SOURCE_DATABASE_URL"] = dbs.source_url
    os.environ["TARGET_DATABASE_URL"] = dbs.target_url
    get_settings.cache_clear()
    dispose_engines()


def create_databases(tag: str) -> Databases:
    """A seeded source and an empty target of the run's, named after ``tag``."""
    from api.seed_source import seed
    from windfarm.db import engine_for
    from windfarm.models import prepare_target

    dbs = Databases(f"{PG_URL}/wf_{RUN_ID}_{tag}_source", f"{PG_URL}/wf_{RUN_ID}_{tag}_target")
    seed(dbs.source_url)
    prepare_target(engine_for(dbs.target_url))
    return dbs


def drop_databases(dbs: Databases) -> None:
    from windfarm.db import dispose_engines, drop_database

    dispose_engines()
    drop_database(dbs.source_url)
    drop_database(dbs.target_url)


@contextmanager
def module_databases(tag: str) -> Iterator[Databases]:
    """Databases of a test module's own (for modules whose tests write to the
    target), dropped at the end; the databases current before are current again."""
    saved = current_databases()
    dbs = create_databases(f"{tag}{uuid.uuid4().hex[:6]}")
    try:
        yield dbs
    finally:
        drop_databases(dbs)
        use_databases(saved)


@contextmanager
def in_process_client(
    dbs: Databases | None = None, *, reset_sql: str | None = None, app=None, **options
) -> Iterator:
    """A FastAPI ``TestClient`` (an httpx client) on the API in this process.

    ``dbs`` are made current first and ``reset_sql`` run on the target (to empty
    what the test needs empty); ``app`` defaults to a new ``create_app()``, built
    after that; ``options`` go to ``TestClient`` (``base_url``,
    ``raise_server_exceptions``).
    """
    from fastapi.testclient import TestClient
    from sqlalchemy import text

    from api.main import create_app
    from windfarm.db import target_engine

    if dbs is not None:
        use_databases(dbs)
    if reset_sql:
        with target_engine().begin() as conn:
            conn.execute(text(reset_sql))
    with TestClient(create_app() if app is None else app, **options) as client:
        yield client
