"""Fixtures: uniquely named databases on the real PostgreSQL, dropped afterwards;
in-process clients; real processes, stopped afterwards. The helpers behind them
are in ``tests/support/``.

The test run points the settings at its own databases before any project module
reads them, so nothing here touches ``source_db``/``target_db`` or depends on
what an earlier run left behind.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

from tests.support.databases import PG_URL, REDIS_URL, RUN_ID

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

import pytest  # noqa: E402

from tests.support.databases import (  # noqa: E402
    Databases,
    create_databases,
    drop_databases,
    in_process_client,
    use_databases,
)
from tests.support.procs import (  # noqa: E402
    Tracker,
    process_env,
    purge_run_queue,
    run_api,
    run_worker,
)
from tests.support.proxies import FaultyProxy  # noqa: E402
from windfarm.config import get_settings  # noqa: E402
from windfarm.db import dispose_engines, drop_database, engine_for  # noqa: E402
from windfarm.models import prepare_target  # noqa: E402

# --- Databases -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_dbs() -> Iterator[Databases]:
    """A seeded source and an empty target shared by tests that only read the source."""
    dbs = create_databases("shared")
    yield dbs
    drop_databases(dbs)


@pytest.fixture
def dbs(shared_dbs: Databases) -> Iterator[Databases]:
    """The shared databases, made current for this test."""
    use_databases(shared_dbs)
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
    use_databases(dbs)
    from sqlalchemy import text

    with engine_for(_scratch_target).begin() as conn:
        conn.execute(text("TRUNCATE etl_slice, etl_job, data, signal RESTART IDENTITY CASCADE"))
    yield dbs


@pytest.fixture
def fresh_dbs() -> Iterator[Databases]:
    """A seeded source and an empty target of this test's own, current while it runs."""
    created = create_databases(uuid.uuid4().hex[:6])
    use_databases(created)
    yield created
    drop_databases(created)


@pytest.fixture
def current_dbs(request: pytest.FixtureRequest) -> Databases:
    """The test's databases, made current: ``fresh_dbs`` where the test asks for
    them, else the shared ``dbs``. Fixtures that start a process or a client ask
    for this first, so that what they start sees the test's databases (and is
    stopped before they are dropped)."""
    return request.getfixturevalue("fresh_dbs" if "fresh_dbs" in request.fixturenames else "dbs")


@pytest.fixture
def client(current_dbs: Databases):
    """An HTTP client on the API, in process, on the test's databases."""
    with in_process_client() as test_client:
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


# --- Real processes (tests/support/procs.py): the API server and Celery workers ----------


@pytest.fixture
def procs() -> Iterator[Tracker]:
    """The test's :class:`~tests.support.procs.Tracker`: ``procs.add(proc)``,
    ``procs.defer(cleanup)``. At teardown every process is stopped (its log is
    printed, which pytest shows when the test failed), then the cleanups run."""
    with Tracker() as tracker:
        yield tracker


@pytest.fixture
def api_factory(current_dbs: Databases, procs: Tracker, tmp_path_factory: pytest.TempPathFactory):
    """Start real API servers on this test's databases: ``start(**env) -> Proc``
    (``start(metrics=True, **env)``: with ``/metrics``, see ``run_api``)."""

    def start(*, metrics: bool = False, **env: str):
        return procs.add(
            run_api(
                process_env(**env),
                name=f"api{len(procs) + 1}",
                log_dir=tmp_path_factory.mktemp("api"),
                metrics=metrics,
            )
        )

    return start


@pytest.fixture
def api_server(api_factory):
    """A real API server (``python -m api.serve``) on this test's databases; ``.url``
    is its base URL."""
    return api_factory()


@pytest.fixture
def metrics_api(api_factory):
    """Start real APIs with ``/metrics`` on the test's databases: ``start(**env) -> Proc``."""
    return lambda **env: api_factory(metrics=True, **env)


@pytest.fixture
def worker_factory(
    current_dbs: Databases, procs: Tracker, tmp_path_factory: pytest.TempPathFactory
):
    """Start real ``celery -A workers worker`` processes on this test's databases and
    the run's queue: ``start(api_base_url, concurrency=2, **env) -> Proc``.

    At teardown the workers are stopped (SIGKILL for what stays) and every Redis
    key of the queue is deleted, so the next test starts from an empty queue.
    """
    procs.defer(purge_run_queue)

    def start(api_base_url: str, *, concurrency: int = 2, **env: str):
        return procs.add(
            run_worker(
                process_env(API_BASE_URL=api_base_url, **env),
                concurrency=concurrency,
                name=f"worker{len(procs) + 1}",
                log_dir=tmp_path_factory.mktemp("worker"),
            )
        )

    return start


@pytest.fixture
def worker(worker_factory, api_server):
    """A real worker (concurrency 2) fetching from the real ``api_server``."""
    return worker_factory(api_server.url)


@pytest.fixture
def proxies(procs: Tracker):
    """Start :class:`~tests.support.proxies.FaultyProxy` servers:
    ``start(upstream, rule) -> FaultyProxy``; closed after the test's processes."""

    def start(upstream: str, rule) -> FaultyProxy:
        proxy = FaultyProxy(upstream, rule)
        procs.defer(proxy.close)
        return proxy

    return start


@pytest.fixture
def system(fresh_dbs: Databases, procs: Tracker):
    """A :class:`tests.support.system.System` on this test's own databases, holding
    its ``procs``: at teardown its processes are stopped (logs printed), its
    cleanups run (proxies closed) and the run's queues emptied."""
    from tests.support.system import System

    procs.defer(purge_run_queue)
    return System(fresh_dbs, procs)


@pytest.fixture(scope="session", autouse=True)
def _purge_run_queue() -> Iterator[None]:
    """At the end of the run, delete the Redis keys of its queue: messages that
    tests published without a worker to consume them."""
    yield
    try:
        purge_run_queue()
    except Exception as exc:  # noqa: BLE001 - Redis may be down in a test run that needs none
        print(f"could not purge queue {os.environ['ETL_QUEUE']}: {exc}")
