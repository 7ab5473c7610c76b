"""Security: the token check, and no credentials, SQL or stack traces in answers,
logs or the slice errors that ``GET /jobs/{id}`` shows.

The compose file's read-only source role and Flower's mandatory basic auth are
checked in ``tests/test_compose.py`` (and Flower's 401 on a real server in
``tests/test_system.py``); this file does not repeat them.

The shared PostgreSQL trusts local connections, so a URL may carry any
password and still connect: the tests give every URL a password of its own and
look for it everywhere a leak could surface.
"""

from __future__ import annotations

import hmac
import inspect

import httpx
import pytest
from sqlalchemy import text

from api import deps
from tests.support.databases import Databases, in_process_client
from tests.support.jobs import post_job, slice_rows
from tests.support.procs import answered, free_port, listen_args, process_env, run_worker, serve
from tests.support.system import PrivateRedis
from tests.support.waiting import wait_for_job
from windfarm.db import target_engine
from windfarm.queue import app as celery_app
from workers.tasks import process_slice

SOURCE_PW = "src-Pw-7d1e9a"
TARGET_PW = "tgt-Pw-4c2b8f"
API_PW = "api-Pw-93ab1c"
BROKER_PW = "brk-Pw-5e6f70"
PASSWORDS = (SOURCE_PW, TARGET_PW, API_PW, BROKER_PW)
# What SQL or a Python traceback would leave in a message.
SQL_OR_TRACE = ("SELECT ", "INSERT ", "UPDATE ", "DELETE ", "[SQL", "Traceback", 'File "')


def with_password(url: str, password: str, *, port: int | None = None) -> str:
    """``url`` (postgresql+psycopg2://postgres@127.0.0.1:5432/db) with a password,
    and on another port if given (one nobody listens on: a broken host)."""
    url = url.replace("postgres@", f"postgres:{password}@", 1)
    return url.replace(":5432/", f":{port}/", 1) if port else url


def assert_clean(where: str, text_: str, *, sql_too: bool = True) -> None:
    for secret in PASSWORDS:
        assert secret not in text_, f"a password in {where}:\n{text_[-3000:]}"
    if sql_too:
        for marker in SQL_OR_TRACE:
            assert marker not in text_, f"{marker!r} in {where}:\n{text_[-3000:]}"


def start_api_even_if_unhealthy(env: dict[str, str]):
    """A real API server, once it answers /health at all (200 or 503)."""
    return serve(
        "api",
        ["-m", "api.serve"],
        env,
        listen=lambda port: listen_args(port, log_level="info"),
        ready=answered,
        probe_timeout=10,
    )


# --- The token ---------------------------------------------------------------------


def test_the_token_is_compared_in_constant_time(client, settings_env, monkeypatch):
    source = inspect.getsource(deps.require_token)
    assert "hmac.compare_digest(" in source and "== expected" not in source
    compared = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    settings_env(API_TOKEN="s3cret-token")
    # Same length, a different last byte: compare_digest decides, and says no.
    denied = client.post(
        "/jobs", json={"date": "2025-12-05"}, headers={"Authorization": "Bearer s3cret-tokeN"}
    )
    assert denied.status_code == 401
    assert compared == [(b"s3cret-tokeN", b"s3cret-token")]
    assert "s3cret-token" not in denied.text


# --- Error answers -----------------------------------------------------------------


def test_an_unexpected_error_is_a_generic_500(fresh_dbs: Databases, monkeypatch):
    from windfarm import jobs

    def broken(*_, **__):
        raise RuntimeError(f"SELECT secret FROM etl_job -- {TARGET_PW}")

    monkeypatch.setattr(jobs, "list_jobs", broken)
    with in_process_client(raise_server_exceptions=False) as client:
        response = client.get("/jobs")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}


def test_a_database_error_is_a_generic_500_without_sql(fresh_dbs: Databases):
    with in_process_client(raise_server_exceptions=False) as client:
        with target_engine().begin() as conn:
            conn.execute(text("DROP TABLE etl_slice"))  # every job query now fails in SQL
        response = client.get("/jobs")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}


def test_databases_down_give_generic_503s_and_no_password_anywhere(fresh_dbs: Databases, procs):
    env = process_env(
        SOURCE_DATABASE_URL=with_password(fresh_dbs.source_url, SOURCE_PW, port=free_port()),
        TARGET_DATABASE_URL=with_password(fresh_dbs.target_url, TARGET_PW, port=free_port()),
    )
    api = procs.add(start_api_even_if_unhealthy(env))
    requests = [
        ("GET", "/health", None),
        ("GET", "/data?start=2025-12-05T00:00:00", None),
        ("POST", "/jobs", {"date": "2025-12-05"}),
        ("GET", "/jobs", None),
        ("GET", "/jobs/1", None),
        ("GET", "/partitions?start_date=2025-12-05", None),
        ("GET", "/series?signal=power_mean_10m&start=2025-12-05", None),
        ("GET", "/signals", None),
    ]
    for method, path, body in requests:
        response = httpx.request(method, api.url + path, json=body, timeout=30)
        assert response.status_code == 503, (path, response.text)
        assert_clean(f"the answer to {method} {path}", response.text)
        if path != "/health":
            assert response.json() == {
                "detail": "a database the service needs is not answering; try again later"
            }
            assert response.headers["Retry-After"] == "5"
    api.stop()
    log = api.log()
    assert "a database the service needs" not in log  # the log names the real cause:
    assert "OperationalError" in log and "Connection refused" in log
    assert_clean("the API's log", log, sql_too=False)


@pytest.mark.slow
def test_slice_errors_record_no_password_or_sql(fresh_dbs: Databases, procs, worker_factory):
    """The API's source is down: every slice waits after its retries, and the reasons
    that GET /jobs/{id} shows, and both logs, name the cause without any secret."""
    api = procs.add(
        start_api_even_if_unhealthy(
            process_env(
                SOURCE_DATABASE_URL=with_password(
                    fresh_dbs.source_url, SOURCE_PW, port=free_port()
                ),
                TARGET_DATABASE_URL=with_password(fresh_dbs.target_url, TARGET_PW),
            )
        )
    )
    worker = worker_factory(
        api.url.replace("http://", f"http://etl:{API_PW}@"),
        TARGET_DATABASE_URL=with_password(fresh_dbs.target_url, TARGET_PW),
        ETL_MAX_RETRIES="1",
        ETL_RETRY_BACKOFF_MAX_S="1",
    )
    job_id = post_job(api.url, {"date": "2025-12-04"})["id"]
    job_url = f"{api.url}/jobs/{job_id}"
    job = wait_for_job(
        job_id,
        api=api.url,
        done=lambda job: job["slices_waiting"] >= 24,
        interval=0.3,
        what=f"every slice of job {job_id} waiting",
        procs=(worker,),
    )
    assert (job["status"], job["slices_failed"]) == ("running", 0)
    for waiting in job["waiting"]:
        assert waiting["message"].startswith("GET http://127.0.0.1:")
        assert (
            "answered HTTP 503: a database the service needs is not answering" in waiting["message"]
        )
        assert waiting["message"].endswith("(after 2 attempts)")
        assert_clean("a slice's reason", waiting["message"])
    assert_clean("GET /jobs/{id}", httpx.get(job_url, timeout=10).text)
    stored = [row.error for row in slice_rows(job_id, "error").values()]
    assert len(stored) == 24 and all(stored)
    assert_clean("etl_slice.error", "\n".join(stored))
    worker.stop()
    api.stop()
    assert_clean("the worker's log", worker.log(), sql_too=False)
    assert_clean("the API's log", api.log(), sql_too=False)


@pytest.mark.slow
def test_a_worker_whose_target_and_broker_need_passwords_logs_none(fresh_dbs: Databases, procs):
    broker = PrivateRedis(password=BROKER_PW)
    broker.start()
    try:
        env = process_env(
            CELERY_BROKER_URL=broker.url,
            TARGET_DATABASE_URL=with_password(fresh_dbs.target_url, TARGET_PW, port=free_port()),
            API_BASE_URL=f"http://etl:{API_PW}@127.0.0.1:{free_port()}",
            ETL_MAX_RETRIES="1",
            ETL_RETRY_BACKOFF_MAX_S="1",
        )
        worker = procs.add(run_worker(env, concurrency=1))
        with celery_app.connection_for_write(broker.url) as conn:
            process_slice.apply_async((1, "2025-12-05T03:00:00"), connection=conn)
        # Two attempts fail on the target; the slice is left to the reconciler.
        assert worker.wait_for_log("left to the reconciler", timeout=30), worker.describe()
        assert worker.wait_for_log("raised expected: TargetUnavailable", timeout=10), (
            worker.describe()
        )
        worker.stop()
        log = worker.log()
        assert f"redis://:**@127.0.0.1:{broker.port}" in log  # Celery masks it in its banner
        assert "target database unavailable: OperationalError" in log
        assert_clean("the worker's log", log, sql_too=False)
    finally:
        broker.stop()


def test_dates_are_never_interpolated_into_sql(client):
    # A value that would break out of a quoted literal is only ever a 422.
    response = client.get("/data", params={"start": "2025-12-05'; DROP TABLE data; --"})
    assert response.status_code == 422
    assert client.get("/data", params={"start": "2025-12-05"}).status_code == 200


def test_no_job_is_created_by_an_unauthorized_post(client, settings_env, dbs):
    settings_env(API_TOKEN="s3cret-token")
    with target_engine().connect() as conn:
        before = conn.scalar(text("SELECT count(*) FROM etl_job"))
    assert client.post("/jobs", json={"date": "2025-12-05"}).status_code == 401
    with target_engine().connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM etl_job")) == before
