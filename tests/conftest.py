"""Fixtures: uniquely named databases on the real PostgreSQL, dropped afterwards.

The test run points the settings at its own databases before any project module
reads them, so nothing here touches ``source_db``/``target_db`` or depends on
what an earlier run left behind.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
RUN_ID = uuid.uuid4().hex[:10]

# A developer's .env (API_TOKEN, ETL_* settings) must not change the tests.
os.environ["WINDFARM_ENV_FILE"] = ""
os.environ["SOURCE_DATABASE_URL"] = f"{PG_URL}/wf_{RUN_ID}_source"
os.environ["TARGET_DATABASE_URL"] = f"{PG_URL}/wf_{RUN_ID}_target"
os.environ["CELERY_BROKER_URL"] = f"{REDIS_URL}/15"
os.environ["ETL_QUEUE"] = f"etl-test-{RUN_ID}"
for name in (
    "API_TOKEN",
    "FLOWER_BASIC_AUTH",
    "DATA_MAX_DAYS",
    "JOBS_MAX_DAYS",
    "ETL_VARIABLES",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "ALLOWED_HOSTS",
):
    os.environ.pop(name, None)
# Test workers serve no metrics unless a test asks: they would compete for one port.
os.environ["ETL_METRICS_PORT"] = "0"

from api.seed_source import seed  # noqa: E402
from windfarm.config import get_settings  # noqa: E402
from windfarm.db import dispose_engines, drop_database, engine_for  # noqa: E402
from windfarm.models import prepare_target  # noqa: E402


@dataclass(frozen=True)
class Databases:
    source_url: str
    target_url: str


def _use(dbs: Databases) -> None:
    os.environ["SOURCE_DATABASE_URL"] = dbs.source_url
    os.environ["TARGET_DATABASE_URL"] = dbs.target_url
    get_settings.cache_clear()
    dispose_engines()


def _create(tag: str) -> Databases:
    dbs = Databases(f"{PG_URL}/wf_{RUN_ID}_{tag}_source", f"{PG_URL}/wf_{RUN_ID}_{tag}_target")
    seed(dbs.source_url)
    prepare_target(engine_for(dbs.target_url))
    return dbs


def _drop(dbs: Databases) -> None:
    dispose_engines()
    drop_database(dbs.source_url)
    drop_database(dbs.target_url)


def module_databases(tag: str) -> Iterator[Databases]:
    """Body of a module-scoped fixture: databases of a test module's own (for
    modules whose tests write to the target); the previous ones are current
    again afterwards."""
    saved = Databases(os.environ["SOURCE_DATABASE_URL"], os.environ["TARGET_DATABASE_URL"])
    dbs = _create(f"{tag}{uuid.uuid4().hex[:6]}")
    yield dbs
    _drop(dbs)
    _use(saved)


def in_process_client(dbs: Databases, reset_sql: str) -> Iterator[object]:
    """Body of a fixture: a FastAPI ``TestClient`` on ``dbs`` after ``reset_sql``
    has emptied what the test needs empty in the target."""
    from fastapi.testclient import TestClient
    from sqlalchemy import text

    from api.main import create_app
    from windfarm.db import target_engine

    _use(dbs)
    with target_engine().begin() as conn:
        conn.execute(text(reset_sql))
    with TestClient(create_app()) as client:
        yield client


@pytest.fixture(scope="session")
def shared_dbs() -> Iterator[Databases]:
    """A seeded source and an empty target shared by tests that only read the source."""
    dbs = _create("shared")
    yield dbs
    _drop(dbs)


@pytest.fixture
def dbs(shared_dbs: Databases) -> Iterator[Databases]:
    """The shared databases, made current for this test."""
    _use(shared_dbs)
    yield shared_dbs


@pytest.fixture(scope="session")
def _scratch_target() -> Iterator[str]:
    url = f"{PG_URL}/wf_{RUN_ID}_scratch_target"
    prepare_target(engine_for(url))
    yield url
    dispose_engines()
    drop_database(url)


@pytest.fixture
def empty_target(shared_dbs: Databases, _scratch_target: str) -> Iterator[Databases]:
    """A target of the run's own, emptied for this test, beside the shared
    (read-only) source: for tests of the bookkeeping, which need no source."""
    dbs = Databases(shared_dbs.source_url, _scratch_target)
    _use(dbs)
    from sqlalchemy import text

    with engine_for(_scratch_target).begin() as conn:
        conn.execute(text("TRUNCATE etl_slice, etl_job, data, signal RESTART IDENTITY CASCADE"))
    yield dbs


@pytest.fixture
def fresh_dbs() -> Iterator[Databases]:
    """A seeded source and an empty target of this test's own, current while it runs."""
    created = _create(uuid.uuid4().hex[:6])
    _use(created)
    yield created
    _drop(created)


@pytest.fixture
def client(dbs: Databases):
    """An HTTP client on the API, in process."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch):
    """Set environment variables for one test and rebuild the settings around them."""

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield set_env
    get_settings.cache_clear()


# --- Real processes (tests/procs.py): the API server and Celery workers ---------


def _current_dbs(request: pytest.FixtureRequest) -> Databases:
    """Set up the test's databases first, so a process started after sees them."""
    name = "fresh_dbs" if "fresh_dbs" in request.fixturenames else "dbs"
    return request.getfixturevalue(name)


@pytest.fixture
def api_factory(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Start real API servers on this test's databases: ``start(**env) -> Proc``.

    Every server is stopped at teardown; its log is printed there, which pytest
    shows when the test failed.
    """
    from tests.procs import process_env, run_api

    _current_dbs(request)
    started = []

    def start(**env: str):
        proc = run_api(
            process_env(**env),
            name=f"api{len(started) + 1}",
            log_dir=tmp_path_factory.mktemp("api"),
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
        print(proc.describe())


@pytest.fixture
def api_server(api_factory):
    """A real API server (``python -m api.serve``) on this test's databases; ``.url``
    is its base URL."""
    return api_factory()


@pytest.fixture
def worker_factory(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Start real ``celery -A workers worker`` processes on this test's databases and
    the run's queue: ``start(api_base_url, concurrency=2, **env) -> Proc``.

    At teardown the workers are stopped (SIGKILL for what stays) and every Redis
    key of the queue is deleted, so the next test starts from an empty queue.
    """
    from tests.procs import process_env, purge_queue, run_worker

    _current_dbs(request)
    started = []

    def start(api_base_url: str, *, concurrency: int = 2, **env: str):
        proc = run_worker(
            process_env(API_BASE_URL=api_base_url, **env),
            concurrency=concurrency,
            name=f"worker{len(started) + 1}",
            log_dir=tmp_path_factory.mktemp("worker"),
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
        print(proc.describe())
    purge_queue(os.environ["CELERY_BROKER_URL"], os.environ["ETL_QUEUE"])


@pytest.fixture
def worker(worker_factory, api_server):
    """A real worker (concurrency 2) fetching from the real ``api_server``."""
    return worker_factory(api_server.url)


@pytest.fixture
def system(fresh_dbs: Databases):
    """A :class:`tests.stack.System` on this test's own databases; its processes are
    stopped (logs printed), proxies closed and the run's queues emptied at teardown."""
    from tests.procs import purge_queue
    from tests.stack import System

    built = System(fresh_dbs)
    yield built
    built.stop()
    purge_queue(os.environ["CELERY_BROKER_URL"], os.environ["ETL_QUEUE"])


@pytest.fixture(scope="session", autouse=True)
def _purge_run_queue() -> Iterator[None]:
    """At the end of the run, delete the Redis keys of its queue: messages that
    tests published without a worker to consume them."""
    yield
    from tests.procs import purge_queue

    try:
        purge_queue(os.environ["CELERY_BROKER_URL"], os.environ["ETL_QUEUE"])
    except Exception as exc:  # noqa: BLE001 - Redis may be down in a test run that needs none
        print(f"could not purge queue {os.environ['ETL_QUEUE']}: {exc}")
