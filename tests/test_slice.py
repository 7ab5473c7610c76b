"""One slice end to end: run_slice against the API and the real target database,
checked against the PostgreSQL oracle (tests/support/oracle.py).

Tests that change the source use ``fresh_dbs``; most talk to the app in process
(``TestClient`` is an httpx client), and the whole-day tests to a real server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.pool import NullPool

from tests.support.databases import Databases
from tests.support.jobs import slice_row
from tests.support.oracle import actual_rows, assert_target_matches_oracle
from windfarm import jobs
from windfarm.config import get_settings
from windfarm.db import dispose_engines, first_row, target_engine
from windfarm.queue import MAX_RETRY_DELAY_S, TASK_TIME_LIMIT_S, VISIBILITY_TIMEOUT_S, app
from windfarm.timeutil import HOUR, day_hours
from workers.celery_app import app as worker_app
from workers.errors import SourceUnavailable, TargetUnavailable, TransientError
from workers.etl import run_with_retries
from workers.run import MAX_UNFINISHED, run_slice
from workers.store import SLICE_LOCK_SPACE, slice_lock_key
from workers.tasks import retry_cap_s

DAY = date(2025, 12, 5)
H10 = datetime(2025, 12, 5, 10)
COLUMNS = ("state", "attempts", "rows_written", "error")  # of a slice's row


# --- helpers -------------------------------------------------------------------


_created: list[tuple[str, int]] = []


@pytest.fixture(autouse=True)
def _drop_created_jobs() -> Iterator[None]:
    """Delete the test's jobs afterwards: slices left open in the shared target
    would look lost to another test's reconciler. (Rows of statistics stay:
    they equal the oracle.)"""
    yield
    for url, job_id in _created:
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM etl_job WHERE id = :j"), {"j": job_id})
        except OperationalError:
            pass  # a fresh database, already dropped
        finally:
            engine.dispose()
    _created.clear()


def new_job(day: date = DAY, *, allow_empty: bool = False) -> int:
    with target_engine().begin() as conn:
        job_id = jobs.store_job(conn, origin="cli", hours=day_hours(day), allow_empty=allow_empty)
    assert job_id is not None
    _created.append((get_settings().target_database_url, job_id))
    return job_id


def run_day(
    day: date = DAY, *, client: httpx.Client | None = None, allow_empty: bool = False
) -> tuple[int, list]:
    job_id = new_job(day, allow_empty=allow_empty)
    return job_id, [run_slice(job_id, hour, client=client) for hour in day_hours(day)]


def day_range(day: date = DAY) -> tuple[datetime, datetime]:
    start = datetime.combine(day, datetime.min.time())
    return start, start + timedelta(days=1)


def source_exec(dbs: Databases, sql: str, **params) -> None:
    engine = create_engine(dbs.source_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), params)
    finally:
        engine.dispose()


def target_snapshot(dbs: Databases, start: datetime, end: datetime) -> dict:
    """Target rows with their row versions (xmin), to see whether a rerun rewrote them."""
    engine = create_engine(dbs.target_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    'SELECT "timestamp", signal_id, value, xmin::text FROM data '
                    'WHERE "timestamp" >= :s AND "timestamp" < :e'
                ),
                {"s": start, "e": end},
            ).all()
    finally:
        engine.dispose()
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def failing_api(
    upstream: httpx.Client, fail: Callable[[httpx.Request, int], httpx.Response | None]
) -> tuple[httpx.Client, list[httpx.Request]]:
    """A client whose transport asks ``fail(request, n)`` first (n counts requests
    from 0) and forwards to ``upstream`` (the in-process ``client``) when it answers None."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = fail(request, len(seen) - 1)
        if answer is not None:
            return answer
        forwarded = upstream.get(request.url.path, params=request.url.params)
        return httpx.Response(
            forwarded.status_code,
            content=forwarded.content,
            headers={"content-type": forwarded.headers["content-type"]},
        )

    return httpx.Client(transport=httpx.MockTransport(handler)), seen


# --- whole days against a real server ------------------------------------------


def test_a_whole_day_through_a_real_api_server_equals_the_oracle(dbs, api_server, settings_env):
    settings_env(API_BASE_URL=api_server.url)
    job_id, outcomes = run_day()
    assert [o.state for o in outcomes] == ["succeeded"] * 24
    compared = assert_target_matches_oracle(dbs.source_url, dbs.target_url, *day_range())
    assert compared > 1100  # 144 windows x 8 signals, less the gaps' std rows at most
    assert sum(o.rows_written for o in outcomes) == compared
    with target_engine().connect() as conn:
        view = jobs.get_job(conn, job_id)
    assert (view.status, view.slices_succeeded, view.rows_written) == ("succeeded", 24, compared)


def test_a_rerun_leaves_the_target_exactly_as_it_was(dbs, api_server, settings_env):
    settings_env(API_BASE_URL=api_server.url)
    day = date(2025, 12, 6)
    run_day(day)
    before = target_snapshot(dbs, *day_range(day))
    _, outcomes = run_day(day)
    assert all(o.state == "succeeded" for o in outcomes)
    after = target_snapshot(dbs, *day_range(day))
    # Same keys and values, and not even rewritten: the row versions are unchanged.
    assert after == before
    assert_target_matches_oracle(dbs.source_url, dbs.target_url, *day_range(day))


# --- source changes (fresh databases, app in process) ----------------------------


def test_a_corrected_source_value_updates_the_target(fresh_dbs, client):
    run_day(client=client)
    source_exec(
        fresh_dbs,
        "UPDATE data SET wind_speed = 99.5, power = -1 WHERE \"timestamp\" = '2025-12-05 10:03'",
    )
    job_id = new_job()
    assert run_slice(job_id, H10, client=client).state == "succeeded"
    rows = actual_rows(fresh_dbs.target_url, H10, H10 + HOUR)
    assert rows[(H10, "wind_speed_max_10m")] == 99.5
    assert rows[(H10, "power_min_10m")] == -1
    assert_target_matches_oracle(fresh_dbs.source_url, fresh_dbs.target_url, *day_range())


def test_windows_that_lost_their_data_lose_their_rows(fresh_dbs, client):
    run_day(client=client)
    w10, w20 = H10 + timedelta(minutes=10), H10 + timedelta(minutes=20)
    source_exec(
        fresh_dbs,
        'UPDATE data SET power = NULL WHERE "timestamp" >= :s AND "timestamp" < :e',
        s=w10,
        e=w10 + timedelta(minutes=10),
    )
    source_exec(
        fresh_dbs,
        'DELETE FROM data WHERE "timestamp" >= :s AND "timestamp" < :e',
        s=w20,
        e=w20 + timedelta(minutes=10),
    )
    assert run_slice(new_job(), H10, client=client).state == "succeeded"
    rows = actual_rows(fresh_dbs.target_url, H10, H10 + HOUR)
    assert not [k for k in rows if k[0] == w10 and k[1].startswith("power_")]
    assert (w10, "wind_speed_mean_10m") in rows
    assert not [k for k in rows if k[0] == w20]
    assert_target_matches_oracle(fresh_dbs.source_url, fresh_dbs.target_url, *day_range())


def test_null_gaps_and_missing_minutes(fresh_dbs, client):
    # NULLs and holes scattered over the day, some windows losing one variable.
    source_exec(
        fresh_dbs,
        "UPDATE data SET wind_speed = NULL WHERE date_part('minute', "
        '"timestamp")::int % 7 = 3 AND "timestamp"::date = \'2025-12-05\'',
    )
    source_exec(
        fresh_dbs,
        'UPDATE data SET power = NULL WHERE "timestamp" BETWEEN '
        "'2025-12-05 04:00' AND '2025-12-05 05:59'",
    )
    source_exec(
        fresh_dbs,
        "DELETE FROM data WHERE date_part('minute', \"timestamp\")::int % 11 "
        "= 5 AND \"timestamp\"::date = '2025-12-05'",
    )
    _, outcomes = run_day(client=client)
    assert all(o.state == "succeeded" for o in outcomes)
    assert_target_matches_oracle(fresh_dbs.source_url, fresh_dbs.target_url, *day_range())
    rows = actual_rows(fresh_dbs.target_url, *day_range())
    assert not [k for k in rows if k[1].startswith("power_") and 4 <= k[0].hour < 6]


def test_a_one_value_window_has_no_std(fresh_dbs, client):
    source_exec(
        fresh_dbs,
        "DELETE FROM data WHERE \"timestamp\" > '2025-12-05 10:00' "
        "AND \"timestamp\" < '2025-12-05 10:10'",
    )
    assert run_slice(new_job(), H10, client=client).state == "succeeded"
    rows = actual_rows(fresh_dbs.target_url, H10, H10 + timedelta(minutes=10))
    assert sorted(name for _, name in rows) == sorted(
        f"{v}_{s}_10m" for v in ("wind_speed", "power") for s in ("mean", "min", "max")
    )
    assert_target_matches_oracle(fresh_dbs.source_url, fresh_dbs.target_url, H10, H10 + HOUR)


def test_an_hour_the_source_lost_entirely_is_not_erased_unless_asked(fresh_dbs, client):
    run_day(client=client)
    kept = actual_rows(fresh_dbs.target_url, *day_range())
    source_exec(fresh_dbs, "DELETE FROM data WHERE \"timestamp\"::date = '2025-12-05'")
    job_id, outcomes = run_day(client=client)
    # No rows at all for hours that hold statistics: a misconfigured or emptied
    # source, not a correction. Nothing is erased, and the job says why.
    assert {o.state for o in outcomes} == {"failed"}
    assert "has no rows for 2025-12-05T10:00:00" in outcomes[10].error
    assert "allow_empty" in outcomes[10].error
    assert actual_rows(fresh_dbs.target_url, *day_range()) == kept
    with target_engine().connect() as conn:
        assert jobs.get_job(conn, job_id).status == "failed"
    # A job that allows it erases them; neighbouring days are untouched.
    _, outcomes = run_day(client=client, allow_empty=True)
    assert [(o.state, o.rows_written) for o in outcomes] == [("succeeded", 0)] * 24
    assert actual_rows(fresh_dbs.target_url, *day_range()) == {}
    assert actual_rows(fresh_dbs.target_url, *day_range(date(2025, 12, 4))) == {}
    # An hour with neither source rows nor statistics has nothing to lose.
    _, outside = run_day(date(2026, 1, 1), client=client)  # never seeded
    assert all(o.state == "succeeded" and o.rows_written == 0 for o in outside)


def test_non_finite_source_values_are_ignored_and_counted(fresh_dbs, client):
    source_exec(
        fresh_dbs,
        "UPDATE data SET wind_speed = 'NaN' WHERE \"timestamp\" IN "
        "('2025-12-05 10:01', '2025-12-05 10:02')",
    )
    source_exec(
        fresh_dbs, "UPDATE data SET power = 'Infinity' WHERE \"timestamp\" = '2025-12-05 10:13'"
    )
    source_exec(
        fresh_dbs,
        "UPDATE data SET power = '-Infinity', wind_speed = NULL "
        "WHERE \"timestamp\" = '2025-12-05 10:44'",
    )
    job_id = new_job()
    outcome = run_slice(job_id, H10, client=client)
    assert (outcome.state, outcome.values_ignored) == ("succeeded", 4)  # NULL is not counted
    rows = actual_rows(fresh_dbs.target_url, H10, H10 + HOUR)
    assert all(abs(v) < 1e6 for v in rows.values())
    assert_target_matches_oracle(fresh_dbs.source_url, fresh_dbs.target_url, H10, H10 + HOUR)
    assert slice_row(job_id, H10, *COLUMNS).state == "succeeded"
    with target_engine().connect() as conn:
        assert jobs.get_job(conn, job_id).values_ignored == 4


def test_a_timestamp_off_the_minute_counts_in_its_window(fresh_dbs, client):
    source_exec(
        fresh_dbs,
        "INSERT INTO data VALUES ('2025-12-05 10:00:30', 1000.0, 0.0, 1.0), "
        "('2025-12-05 10:09:59.999', 1.0, 5000.0, 1.0)",
    )
    assert run_slice(new_job(), H10, client=client).state == "succeeded"
    rows = actual_rows(fresh_dbs.target_url, H10, H10 + HOUR)
    assert rows[(H10, "wind_speed_max_10m")] == 1000.0
    assert rows[(H10, "power_max_10m")] == 5000.0
    assert_target_matches_oracle(fresh_dbs.source_url, fresh_dbs.target_url, H10, H10 + HOUR)


# --- repeats and concurrency ------------------------------------------------------


def test_a_duplicate_message_for_an_ended_slice_does_nothing(dbs, client):
    job_id = new_job()
    assert run_slice(job_id, "2025-12-05T11:00:00", client=client).state == "succeeded"
    again = run_slice(job_id, "2025-12-05T11:00:00", client=client)
    assert again.state == "skipped"
    assert slice_row(job_id, H10 + HOUR, *COLUMNS).attempts == 1


def test_concurrent_runs_of_one_slice_neither_deadlock_nor_mix(fresh_dbs, client):
    run_day(client=client)
    # Change the source, then let eight runs (three of them on one job's slice)
    # write the hour at once.
    source_exec(
        fresh_dbs,
        'UPDATE data SET power = power + 1.25 WHERE "timestamp" >= :s AND "timestamp" < :e',
        s=H10,
        e=H10 + HOUR,
    )
    shared = new_job()
    job_ids = [shared, shared, shared, *(new_job() for _ in range(5))]
    barrier = threading.Barrier(len(job_ids))
    results: list = []
    errors: list = []

    def run(job_id: int) -> None:
        try:
            barrier.wait(10)
            results.append(run_slice(job_id, H10, client=client))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(j,)) for j in job_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a run is stuck"
    assert errors == []
    assert {r.state for r in results} <= {"succeeded", "skipped"}
    assert sum(r.state == "succeeded" for r in results) >= 6
    assert_target_matches_oracle(fresh_dbs.source_url, fresh_dbs.target_url, *day_range())


def test_writers_of_one_hour_take_turns_on_its_advisory_lock(dbs, client):
    job_id = new_job()
    finished = threading.Event()
    holder = create_engine(dbs.target_url, poolclass=NullPool)
    try:
        with holder.begin() as conn:
            conn.execute(
                text("SELECT pg_advisory_xact_lock(:a, :b)"),
                {"a": SLICE_LOCK_SPACE, "b": slice_lock_key(H10)},
            )
            thread = threading.Thread(
                target=lambda: (run_slice(job_id, H10, client=client), finished.set())
            )
            thread.start()
            assert not finished.wait(1.5), "the run did not wait for the hour's lock"
            assert slice_row(job_id, H10, *COLUMNS).state == "queued"  # not even claimed yet
        thread.join(30)
    finally:
        holder.dispose()
    assert finished.is_set()
    assert slice_row(job_id, H10, *COLUMNS).state == "succeeded"


def test_the_newest_read_of_the_source_wins(fresh_dbs, client):
    """A slow copy read the source before a correction; a second copy of the hour
    starts after it. The second must not read before the first has written, or
    the first's older statistics would land last."""
    answered, release = threading.Event(), threading.Event()

    def hold_first_answer(request: httpx.Request, n: int) -> httpx.Response | None:
        if n > 0:
            return None
        forwarded = client.get(request.url.path, params=request.url.params)
        answered.set()  # produced from the uncorrected source, not delivered yet
        release.wait(30)
        return httpx.Response(
            200, content=forwarded.content, headers={"content-type": "application/json"}
        )

    slow, _ = failing_api(client, hold_first_answer)
    first = threading.Thread(target=run_slice, args=(new_job(), H10), kwargs={"client": slow})
    first.start()
    assert answered.wait(30)
    source_exec(
        fresh_dbs,
        'UPDATE data SET power = power + 7.5 WHERE "timestamp" >= :s AND "timestamp" < :e',
        s=H10,
        e=H10 + HOUR,
    )
    done: list = []
    second = threading.Thread(target=lambda: done.append(run_slice(new_job(), H10, client=client)))
    second.start()
    second.join(1.5)
    assert not done, "the second copy read the source while the first held the hour"
    release.set()
    first.join(30)
    second.join(30)
    assert [o.state for o in done] == ["succeeded"]
    assert_target_matches_oracle(fresh_dbs.source_url, fresh_dbs.target_url, H10, H10 + HOUR)


def test_an_ended_slice_never_changes_state(dbs):
    job_id = new_job()
    h11 = H10 + HOUR
    with target_engine().begin() as conn:
        assert jobs.claim_slice(conn, job_id, H10) is not None
        assert jobs.complete_slice(conn, job_id, H10, 48)
        assert jobs.claim_slice(conn, job_id, h11) is not None
        assert jobs.fail_slice(conn, job_id, h11, "HTTP 404")
        for hour in (H10, h11):
            assert jobs.claim_slice(conn, job_id, hour) is None
            assert not jobs.fail_slice(conn, job_id, hour, "a late copy failed")
            assert not jobs.complete_slice(conn, job_id, hour, 1)
            assert not jobs.requeue_slice(conn, job_id, hour, "retry")
            assert not jobs.wait_slice(conn, job_id, hour, "API down", first_s=1, max_s=2)
            assert jobs.mark_sent(conn, job_id, [hour]) == 0
    assert tuple(slice_row(job_id, H10, *COLUMNS)) == ("succeeded", 1, 48, None)
    assert tuple(slice_row(job_id, h11, *COLUMNS)) == ("failed", 1, 0, "HTTP 404")


# --- failures --------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        lambda r: httpx.Response(503, json={"detail": "down for maintenance"}),
        lambda r: httpx.Response(500, text="Internal Server Error"),
        lambda r: httpx.Response(429, json={"detail": "slow down"}),
        lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("timed out", request=r)),
        lambda r: (_ for _ in ()).throw(httpx.ConnectError("connection refused", request=r)),
    ],
    ids=["503", "500", "429", "timeout", "connect-error"],
)
def test_transient_api_failures_raise_and_leave_the_slice_open(dbs, client, answer):
    failing, _ = failing_api(client, lambda r, n: answer(r))
    job_id = new_job()
    before = actual_rows(dbs.target_url, H10, H10 + HOUR)
    with pytest.raises(SourceUnavailable) as raised:
        run_slice(job_id, H10, client=failing)
    assert isinstance(raised.value, TransientError)
    state = slice_row(job_id, H10, *COLUMNS)
    assert (state.state, state.attempts, state.error) == ("running", 1, None)
    assert actual_rows(dbs.target_url, H10, H10 + HOUR) == before


def test_transient_failures_are_retried_until_the_api_answers(fresh_dbs, client):
    failing, seen = failing_api(
        client, lambda r, n: httpx.Response(503, text="busy") if n < 2 else None
    )
    job_id = new_job()
    pauses: list[float] = []
    outcome = run_with_retries(job_id, H10, sleep=pauses.append, client=failing)
    assert outcome.state == "succeeded"
    assert (len(seen), len(pauses)) == (3, 2)
    assert slice_row(job_id, H10, *COLUMNS).attempts == 3
    assert_target_matches_oracle(fresh_dbs.source_url, fresh_dbs.target_url, H10, H10 + HOUR)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            httpx.Response(422, json={"detail": "start: not a datetime"}),
            "HTTP 422: start: not a datetime",
        ),
        (httpx.Response(404, json={"detail": "Not Found"}), "HTTP 404: Not Found"),
        (httpx.Response(401, text="no"), "HTTP 401"),
        (httpx.Response(200, text="<html>hello</html>"), "malformed rows"),
        (httpx.Response(200, json=[{"timestamp": "2025-12-05T10:00:00"}]), "malformed rows"),
        (
            httpx.Response(
                200, json=[{"timestamp": "2025-12-05T12:00:00", "wind_speed": 1, "power": 2}]
            ),
            "outside the hour",
        ),
    ],
    ids=["422", "404", "401", "not-json", "missing-column", "outside-the-hour"],
)
def test_permanent_failures_fail_the_slice_at_once(dbs, client, answer, message):
    failing, seen = failing_api(client, lambda r, n: answer)
    job_id = new_job()
    outcome = run_slice(job_id, H10, client=failing)
    assert outcome.state == "failed" and message in outcome.error
    state = slice_row(job_id, H10, *COLUMNS)
    assert (state.state, state.attempts, len(seen)) == ("failed", 1, 1)
    assert message in state.error
    with target_engine().connect() as conn:
        view = jobs.get_job(conn, job_id)
    assert [(e.slice_start, e.message) for e in view.errors] == [(H10, state.error)]


def test_a_slice_that_keeps_dying_is_abandoned(dbs, client):
    job_id = new_job()
    with target_engine().begin() as conn:
        for _ in range(MAX_UNFINISHED):  # claims that never finished (a worker killed each)
            jobs.claim_slice(conn, job_id, H10)
    outcome = run_slice(job_id, H10, client=client)
    assert outcome.state == "failed" and "abandoned" in outcome.error
    assert slice_row(job_id, H10, *COLUMNS).state == "failed"


def test_an_unreachable_target_is_transient(dbs, client, settings_env):
    from tests.support.procs import free_port

    settings_env(TARGET_DATABASE_URL=f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/x")
    dispose_engines()
    try:
        with pytest.raises(TargetUnavailable, match="target database unavailable"):
            run_slice(1, H10, client=client)
    finally:
        dispose_engines()


def test_a_target_connection_lost_mid_slice_is_transient_and_the_rerun_succeeds(dbs, client):
    """The server ends the slice's connection between its claim and its commit
    (the target restarted, say): the commit's error is the target unavailable,
    nothing is written, and the next run of the slice gets a sound connection."""
    job_id = new_job()
    key = slice_lock_key(H10)

    def drop_the_hours_connection(request: httpx.Request, n: int) -> None:
        if n == 0:
            engine = create_engine(dbs.target_url, poolclass=NullPool)
            try:
                with engine.begin() as conn:
                    dropped = conn.scalar(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
                            "WHERE locktype = 'advisory' AND classid = :space AND objid = :key"
                        ),
                        {"space": SLICE_LOCK_SPACE, "key": key},
                    )
            finally:
                engine.dispose()
            assert dropped == 1
        return None

    dropping, _ = failing_api(client, drop_the_hours_connection)
    with pytest.raises(TargetUnavailable, match="target database"):
        run_slice(job_id, H10, client=dropping)
    assert slice_row(job_id, H10, *COLUMNS).state == "running"
    assert run_slice(job_id, H10, client=dropping).state == "succeeded"
    assert slice_row(job_id, H10, *COLUMNS).attempts == 2
    assert_target_matches_oracle(dbs.source_url, dbs.target_url, H10, H10 + HOUR)


def test_a_batch_on_the_bare_cursor_raises_and_invalidates_as_sqlalchemy_would(dbs):
    """``windfarm.db.first_row``, which the slice's batches use instead of
    ``exec_driver_sql``: the first row of the batch's last statement, SQLAlchemy's
    own errors, and a connection the server ended is invalidated (not pooled)."""
    engine = create_engine(dbs.target_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            assert first_row(conn, "SELECT 1; SELECT %(a)s, %(b)s", {"a": 2, "b": "x"}) == (2, "x")
            assert first_row(conn, "SET application_name TO 'first-row'", {}) is None
            with pytest.raises(ProgrammingError) as bad:
                first_row(conn, "SELECT no_such_column FROM etl_job", {})
            assert not bad.value.connection_invalidated and not conn.invalidated
            assert first_row(conn, "SELECT 3", {}) == (3,)  # still sound

            pid = first_row(conn, "SELECT pg_backend_pid()", {})[0]
            with engine.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            with pytest.raises(OperationalError) as lost:
                first_row(conn, "SELECT 4", {})
            assert lost.value.connection_invalidated and conn.invalidated
    finally:
        engine.dispose()


def test_retry_delays_are_capped_below_what_could_pass_for_a_lost_message(settings_env):
    settings_env(ETL_RETRY_BACKOFF_MAX_S="20")
    assert retry_cap_s() == 20
    settings_env(ETL_RETRY_BACKOFF_MAX_S="60", ETL_SLICE_TIMEOUT_S="30")
    assert retry_cap_s() == 15  # half the time after which a queued slice may look lost
    settings_env(ETL_RETRY_BACKOFF_MAX_S="100000", ETL_SLICE_TIMEOUT_S="100000")
    assert retry_cap_s() == MAX_RETRY_DELAY_S


def test_the_app_is_configured_not_to_lose_messages():
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    # Events only while a monitor enables them (Flower does), no "sent" events.
    assert not conf.worker_send_task_events and not conf.task_send_sent_event
    assert conf.timezone == "UTC" and conf.enable_utc
    visibility = conf.broker_transport_options["visibility_timeout"]
    assert visibility == VISIBILITY_TIMEOUT_S
    # A message is held unacknowledged at most a retry countdown plus a run.
    assert visibility > MAX_RETRY_DELAY_S + TASK_TIME_LIMIT_S
    assert worker_app is app and app.tasks["workers.process_slice"].acks_late
