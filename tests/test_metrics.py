"""Metrics: the API's ``GET /metrics`` (the pipeline's state read from the
bookkeeping, the API's requests) and a worker node's metrics port
(``ETL_METRICS_PORT``, every prefork child summed), in process and scraped
from real API and worker processes during real jobs."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from tests.support.databases import in_process_client
from tests.support.jobs import post_job
from tests.support.procs import Proc, free_port
from tests.support.waiting import poll, until, wait_for_job

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, *, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def scrape_until(url: str, done: Callable[[Samples], bool], timeout: float = 15) -> Samples:
    """Scrape until ``done`` holds: a slice's counters follow its commit by microseconds."""
    _, samples = poll(lambda: scrape(url), done, timeout=timeout, interval=0.1)
    return samples


def post_day(api: Proc, day: date) -> int:
    return post_job(api.url, {"date": day.isoformat()})["id"]


def end_of(day: date) -> float:
    return datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC).timestamp()


def source_rows(source_url: str, first: datetime, after: datetime) -> int:
    from windfarm.db import engine_for

    with engine_for(source_url).connect() as conn:
        return conn.scalar(
            text('SELECT count(*) FROM data WHERE "timestamp" >= :s AND "timestamp" < :e'),
            {"s": first, "e": after},
        )


# --- The pipeline's state, from the bookkeeping (in process) ----------------------------


def test_the_pipeline_state_reads_the_bookkeeping(empty_target):
    from windfarm import jobs
    from windfarm.config import get_settings
    from windfarm.db import target_engine
    from windfarm.metrics import catchup_window, pipeline_state
    from windfarm.timeutil import HOUR, utcnow

    first, last = catchup_window(utcnow(), get_settings())
    assert (last - first) / HOUR + 1 == 7 * 24  # ETL_CATCHUP_DAYS=7
    old = [datetime(2025, 12, 5, h) for h in (3, 4, 5)]
    with target_engine().begin() as conn:
        recent = jobs.store_job(conn, origin="hourly", hours=[last - 2 * HOUR, last - HOUR, last])
        for hour in (last - 2 * HOUR, last - HOUR):
            jobs.claim_slice(conn, recent, hour)
        jobs.complete_slice(conn, recent, last - 2 * HOUR, 12)
        jobs.fail_slice(conn, recent, last - HOUR, "HTTP 404")  # `last` stays queued
        backfill = jobs.store_job(conn, origin="api", hours=old)
        jobs.claim_slice(conn, backfill, old[0])  # running
        jobs.wait_slice(conn, backfill, old[1], "API down", first_s=60, max_s=900)
        conn.execute(
            text(
                "UPDATE etl_job SET created_at = created_at - interval '20 minutes' WHERE id = :j"
            ),
            {"j": backfill},
        )
        yesterday = jobs.store_job(conn, origin="api", hours=[datetime(2025, 12, 6, 0)])
        jobs.fail_slice(conn, yesterday, datetime(2025, 12, 6, 0), "HTTP 422")
        conn.execute(
            text(
                "UPDATE etl_slice SET finished_at = finished_at - interval '2 hours' "
                "WHERE job_id = :j"
            ),
            {"j": yesterday},
        )
        state = pipeline_state(conn, first=first, last=last)

    assert state.newest_hour == last - 2 * HOUR
    assert state.last_complete_hour_end == (last - HOUR).replace(tzinfo=UTC).timestamp()
    assert state.missing_hours == 7 * 24 - 1
    assert state.open_slices == {"queued": 2, "running": 1, "waiting": 1}
    assert 20 * 60 <= state.oldest_open_s < 25 * 60  # the backfill's, stored 20 minutes ago
    assert (state.failed_1h, state.failed_24h) == (1, 2)


def test_with_no_bookkeeping_every_series_is_zero_but_the_missing_hours(empty_target):
    from windfarm.config import get_settings
    from windfarm.db import target_engine
    from windfarm.metrics import catchup_window, pipeline_state
    from windfarm.timeutil import utcnow

    first, last = catchup_window(utcnow(), get_settings())
    with target_engine().connect() as conn:
        state = pipeline_state(conn, first=first, last=last)
    assert state.newest_hour is None and state.last_complete_hour_end == 0
    assert state.missing_hours == 7 * 24
    assert state.open_slices == {"queued": 0, "running": 0, "waiting": 0}
    assert (state.oldest_open_s, state.failed_1h, state.failed_24h) == (0, 0, 0)


def test_a_scrape_while_the_target_is_down_says_so_and_still_answers():
    from windfarm.db import engine_for
    from windfarm.metrics import PipelineCollector

    engine = engine_for(f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nowhere")
    collected = {m.name: m.samples for m in PipelineCollector(engine=lambda: engine).collect()}
    assert list(collected) == ["windfarm_etl_database_up"]
    assert collected["windfarm_etl_database_up"][0].value == 0


# --- GET /metrics in process: the access rule and the request metrics ----------------------


def _client():
    from api.main import create_app
    from api.metrics import install

    app = create_app()
    install(app)
    install(app)  # a second call changes nothing
    return in_process_client(app=app)


def test_metrics_are_open_without_api_token_and_need_it_with_one(dbs, settings_env):
    with _client() as client:
        assert client.get("/metrics").status_code == 200
    settings_env(API_TOKEN="metrics-token")
    with _client() as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        allowed = client.get("/metrics", headers={"Authorization": "Bearer metrics-token"})
        assert allowed.status_code == 200
        assert allowed.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "windfarm_etl_database_up 1.0" in allowed.text


def test_requests_are_counted_by_route_template_and_status(dbs):
    with _client() as client:
        client.get("/jobs/999999")
        client.get("/jobs/999998")
        client.get("/health")
        client.get("/metrics")
        client.get("/no/such/route")
        client.delete("/health")  # the route matches, its method does not: 405
        text_ = client.get("/metrics").text
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text_)
        for s in f.samples
    }
    assert (
        value(samples, "http_requests_total", handler="/jobs/{job_id}", method="GET", status="4xx")
        == 2
    )
    assert value(samples, "http_requests_total", handler="/health", method="GET", status="2xx") == 1
    assert (
        value(
            samples, "http_request_duration_seconds_count", handler="/jobs/{job_id}", method="GET"
        )
        == 2
    )
    assert not any(dict(labels).get("handler") == "/metrics" for _, labels in samples)
    # A path no route holds counts under one name, not under itself.
    assert value(samples, "http_requests_total", handler="none", method="GET", status="4xx") == 1
    assert not any("/no/such" in dict(labels).get("handler", "") for _, labels in samples)
    assert (
        value(samples, "http_requests_total", handler="/health", method="DELETE", status="4xx") == 1
    )


def test_recording_does_nothing_where_no_metrics_are_served():
    from workers import metrics

    assert metrics.serve("nobody@nowhere", port=0) is False
    with metrics.in_progress(), metrics.phase("fetch"):
        metrics.outcome("succeeded")
        metrics.rows(written=1, read=1, ignored=0)


# --- Real processes: API and worker metrics during real jobs -------------------------------


def test_a_job_then_a_4xx_show_in_the_api_and_worker_metrics(
    fresh_dbs, metrics_api, worker_factory, proxies
):
    api = metrics_api()
    bad_hour = "2025-12-04T05:00:00"
    proxy = proxies(
        api.url,
        lambda path, n: (404, {"detail": "no such thing"}) if f"start={bad_hour}" in path else None,
    )
    port = free_port()
    worker = worker_factory(proxy.url, concurrency=2, ETL_METRICS_PORT=str(port))
    worker_url, api_url = f"http://127.0.0.1:{port}/metrics", f"{api.url}/metrics"

    before = scrape(worker_url)
    for name in ("fetch", "compute", "write"):
        assert value(before, "windfarm_etl_worker_slice_duration_seconds_count", phase=name) == 0
    assert value(before, "windfarm_etl_worker_slices_total", outcome="succeeded") == 0
    assert value(before, "windfarm_etl_build_info", version=_version()) == 1
    shown = scrape(api_url)
    assert value(shown, "windfarm_etl_last_complete_hour_timestamp_seconds") == 0

    # A day without faults: each phase ran once per slice.
    good = date(2025, 12, 3)
    view = wait_for_job(post_day(api, good), timeout=60, procs=(api, worker))
    assert (view.status, view.slices_succeeded) == ("succeeded", 24)
    done = scrape_until(
        worker_url,
        lambda s: value(s, "windfarm_etl_worker_slice_duration_seconds_count", phase="write") == 24,
    )
    for name in ("fetch", "compute", "write"):
        assert value(done, "windfarm_etl_worker_slice_duration_seconds_count", phase=name) == 24
        assert (
            value(done, "windfarm_etl_worker_slice_duration_seconds_bucket", phase=name, le="+Inf")
            == 24
        )
    assert value(done, "windfarm_etl_worker_slices_total", outcome="succeeded") == 24
    assert value(done, "windfarm_etl_worker_rows_written_total") == view.rows_written
    day_start = datetime.combine(good, datetime.min.time())
    read = source_rows(fresh_dbs.source_url, day_start, day_start + timedelta(days=1))
    assert value(done, "windfarm_etl_worker_source_rows_read_total") == read
    assert value(done, "windfarm_etl_worker_slices_in_progress") == 0
    shown = scrape(api_url)
    assert value(shown, "windfarm_etl_last_complete_hour_timestamp_seconds") == end_of(good)
    assert value(shown, "windfarm_etl_failed_slices", window="1h") == 0
    assert value(shown, "http_requests_total", handler="/data", method="GET", status="2xx") == 24

    # The next day, one hour answers 404: its slice fails, at once, after its fetch.
    bad = good + timedelta(days=1)
    view = wait_for_job(post_day(api, bad), timeout=60, procs=(api, worker))
    assert (view.status, view.slices_succeeded, view.slices_failed) == ("failed", 23, 1)
    done = scrape_until(
        worker_url,
        lambda s: value(s, "windfarm_etl_worker_slice_duration_seconds_count", phase="write") == 47,
    )
    assert value(done, "windfarm_etl_worker_slice_duration_seconds_count", phase="fetch") == 48
    assert value(done, "windfarm_etl_worker_slice_duration_seconds_count", phase="compute") == 47
    assert value(done, "windfarm_etl_worker_slices_total", outcome="succeeded") == 47
    assert value(done, "windfarm_etl_worker_slices_total", outcome="failed") == 1
    for outcome in ("retried", "waiting", "skipped"):
        assert value(done, "windfarm_etl_worker_slices_total", outcome=outcome) == 0
    shown = scrape(api_url)
    assert value(shown, "windfarm_etl_last_complete_hour_timestamp_seconds") == end_of(bad)
    assert value(shown, "windfarm_etl_failed_slices", window="1h") == 1
    assert value(shown, "windfarm_etl_failed_slices", window="24h") == 1
    for state in ("queued", "running", "waiting"):
        assert value(shown, "windfarm_etl_open_slices", state=state) == 0
    assert value(shown, "windfarm_etl_oldest_open_slice_age_seconds") == 0
    # The failed hour is December's, far outside the window: every window hour is missing.
    assert value(shown, "windfarm_etl_missing_hours", window="catchup") == 7 * 24
    assert value(shown, "windfarm_etl_database_up") == 1
    assert value(shown, "http_requests_total", handler="/data", method="GET", status="2xx") == 47
    assert value(shown, "http_requests_total", handler="/jobs", method="POST", status="2xx") == 2


def test_a_killed_pool_child_is_marked_dead_and_its_counts_stay(
    fresh_dbs, metrics_api, worker_factory
):
    from workers.metrics import metrics_dir

    api = metrics_api()
    port = free_port()
    worker = worker_factory(api.url, concurrency=2, ETL_METRICS_PORT=str(port))
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for_job(post_day(api, date(2025, 12, 5)), timeout=60, procs=(api, worker))
    before = scrape_until(
        url, lambda s: value(s, "windfarm_etl_worker_slices_total", outcome="succeeded") == 24
    )

    files = metrics_dir(worker.hostname)
    children = worker.child_pids()
    [victim, *_] = [pid for pid in children if (files / f"gauge_livesum_{pid}.db").exists()]
    os.kill(victim, signal.SIGKILL)
    until(  # Celery starts another
        worker.child_pids,
        lambda now: victim not in now and len(now) >= 2,
        timeout=30,
        interval=0.1,
        what=f"pool child {victim} replaced",
        procs=(worker,),
    )

    after = scrape(url)
    assert not (files / f"gauge_livesum_{victim}.db").exists()
    assert (files / f"counter_{victim}.db").exists()  # a dead child's counts still count
    assert value(after, "windfarm_etl_worker_slices_in_progress") == 0
    for name, labels in (
        ("windfarm_etl_worker_slices_total", {"outcome": "succeeded"}),
        ("windfarm_etl_worker_rows_written_total", {}),
    ):
        assert value(after, name, **labels) == value(before, name, **labels)
    worker.stop()
    assert not files.exists()  # removed at shutdown


def _version() -> str:
    from windfarm import __version__

    return __version__
