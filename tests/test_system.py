"""The running system with real processes: api, workers, beat, Flower, Redis, PostgreSQL.

Each test ends with the target compared to the SQL oracle and the job's report
checked, so "it finished" always means "it is right".
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime

import httpx
import pytest
from sqlalchemy import text

from tests.support.databases import Databases
from tests.support.jobs import get_job, post_job
from tests.support.oracle import assert_target_matches_oracle
from tests.support.procs import process_env, run_api, run_worker
from tests.support.system import FAST, PrivateRedis, System, run_beat, run_flower
from tests.support.waiting import poll, wait_for_job
from windfarm.db import target_engine

pytestmark = pytest.mark.slow


def _duplicates(target_url: str) -> int:
    with target_engine().connect() as conn:
        return conn.scalar(
            text('SELECT count(*) - count(DISTINCT ("timestamp", signal_id)) FROM data')
        )


def test_one_day_job_over_http(fresh_dbs: Databases, system: System):
    api = system.add(run_api(process_env()))
    worker = system.add(run_worker(process_env(API_BASE_URL=api.url)))
    job = post_job(api.url, {"date": "2025-12-05"})
    view = wait_for_job(job["id"], timeout=60, procs=(api, worker))
    shown = get_job(api.url, job["id"])
    assert shown["status"] == "succeeded" == view.status
    counts = (shown["slices_succeeded"], shown["slices_failed"], shown["slices_pending"])
    assert counts == (24, 0, 0)
    assert shown["finished_at"] is not None and shown["errors"] == []
    rows = assert_target_matches_oracle(
        fresh_dbs.source_url, fresh_dbs.target_url, datetime(2025, 12, 5), datetime(2025, 12, 6)
    )
    assert shown["rows_written"] == rows


def test_ten_day_job_is_240_slices_equal_to_the_oracle(fresh_dbs: Databases, system: System):
    api = system.add(run_api(process_env()))
    worker = system.add(run_worker(process_env(API_BASE_URL=api.url)))
    job = post_job(api.url, {"start_date": "2025-12-01", "end_date": "2025-12-10"})
    assert job["slices_total"] == 240
    view = wait_for_job(job["id"], timeout=180, procs=(api, worker))
    assert (view.status, view.slices_succeeded) == ("succeeded", 240)
    rows = assert_target_matches_oracle(
        fresh_dbs.source_url, fresh_dbs.target_url, datetime(2025, 12, 1), datetime(2025, 12, 11)
    )
    assert view.rows_written == rows


def test_a_worker_killed_mid_backfill_loses_and_duplicates_nothing(
    fresh_dbs: Databases, system: System
):
    api = system.add(run_api(process_env()))
    env = process_env(API_BASE_URL=api.url, **FAST)
    doomed = system.add(run_worker(env, name="doomed"))
    job = post_job(api.url, {"start_date": "2025-12-01", "end_date": "2025-12-10"})
    wait_for_job(
        job["id"],
        api=api.url,
        done=lambda shown: shown["slices_succeeded"] >= 30,
        interval=0.05,
        what=f"job {job['id']} to reach 30 slices succeeded",
    )
    # The whole worker dies at once, pool children and all, with slices in hand.
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.popen.wait(10)
    in_hand = get_job(api.url, job["id"])
    assert in_hand["slices_pending"] > 0
    system.add(run_beat(env))
    survivor = system.add(run_worker(env, name="survivor"))
    view = wait_for_job(job["id"], timeout=180, procs=(api, survivor))
    assert (view.status, view.slices_succeeded, view.slices_failed) == ("succeeded", 240, 0)
    rows = assert_target_matches_oracle(
        fresh_dbs.source_url, fresh_dbs.target_url, datetime(2025, 12, 1), datetime(2025, 12, 11)
    )
    assert view.rows_written == rows
    assert _duplicates(fresh_dbs.target_url) == 0


def test_a_job_posted_while_the_broker_is_down_completes_after_it_returns(
    fresh_dbs: Databases, system: System
):
    broker = PrivateRedis()
    broker.start()
    try:
        env_broker = {"CELERY_BROKER_URL": broker.url, **FAST}
        api = system.add(run_api(process_env(**env_broker)))
        env = process_env(API_BASE_URL=api.url, **env_broker)
        worker = system.add(run_worker(env))
        system.add(run_beat(env))
        broker.stop()
        began = time.monotonic()
        job = post_job(api.url, {"date": "2025-12-07"})
        assert time.monotonic() - began < 15  # accepted promptly, not after endless retries
        time.sleep(2)
        assert get_job(api.url, job["id"])["status"] == "queued"
        broker.start()  # same port, empty: nothing of the job was ever sent
        view = wait_for_job(job["id"], timeout=90, procs=(api, worker))
        assert (view.status, view.slices_succeeded) == ("succeeded", 24)
        assert_target_matches_oracle(
            fresh_dbs.source_url, fresh_dbs.target_url, datetime(2025, 12, 7), datetime(2025, 12, 8)
        )
    finally:
        broker.stop()


def test_the_token_guards_posting_on_the_real_server(fresh_dbs: Databases, system: System):
    api = system.add(run_api(process_env(API_TOKEN="t0ken-for-tests")))
    denied = httpx.post(f"{api.url}/jobs", json={"date": "2025-12-05"})
    assert denied.status_code == 401
    assert (
        httpx.post(
            f"{api.url}/jobs", json={"date": "2025-12-05"}, headers={"Authorization": "Bearer nope"}
        ).status_code
        == 401
    )
    post_job(api.url, {"date": "2025-12-05"}, Authorization="Bearer t0ken-for-tests")


def test_two_beats_create_each_scheduled_job_and_the_catch_up_once(
    fresh_dbs: Databases, system: System
):
    api = system.add(run_api(process_env()))
    env = process_env(
        **{
            **FAST,
            "API_BASE_URL": api.url,
            "ETL_HOURLY_CRON": "* * * * *",
            "ETL_DAILY_CRON": "* * * * *",
            "ETL_CATCHUP_DAYS": "1",
        }
    )
    system.add(run_worker(env))
    beats = [system.add(run_beat(env, name="beat1")), system.add(run_beat(env, name="beat2"))]
    for beat in beats:  # each beat sends both schedules at the next minute
        assert beat.wait_for_log("scheduler.enqueue_daily", timeout=75), beat.describe()
        assert beat.wait_for_log("scheduler.enqueue_hourly", timeout=10), beat.describe()

    def scheduled_keys() -> list:
        with target_engine().connect() as conn:
            return conn.execute(
                text(
                    "SELECT dedupe_key, count(*) FROM etl_job WHERE origin IN ('hourly', 'daily') "
                    "GROUP BY 1"
                )
            ).all()

    _, keys = poll(
        scheduled_keys,
        lambda keys: {k.split(":")[0] for k, _ in keys} == {"hourly", "daily"},
        timeout=30,
        interval=0.5,
    )
    counted = dict(keys)
    assert sum(1 for k in counted if k.startswith("daily:")) >= 1
    assert sum(1 for k in counted if k.startswith("hourly:")) >= 1
    assert set(counted.values()) == {1}, counted
    with target_engine().connect() as conn:
        daily_slices = conn.scalar(
            text("SELECT slices_total FROM etl_job WHERE origin = 'daily' ORDER BY id LIMIT 1")
        )
        # Both beats sent the catch-up at start and at each tick: one job filled the day.
        catchups = conn.execute(
            text(
                "SELECT j.id, count(*) FROM etl_job j JOIN etl_slice s ON s.job_id = j.id "
                "WHERE j.origin = 'catchup' GROUP BY j.id"
            )
        ).all()
        twice = conn.scalar(
            text(
                "SELECT count(*) FROM (SELECT s.slice_start FROM etl_slice s JOIN etl_job j "
                "ON j.id = s.job_id WHERE j.origin IN ('catchup', 'hourly') "
                "GROUP BY 1 HAVING count(*) > 1) d"
            )
        )
    assert daily_slices == 24
    assert len(catchups) == 1 and catchups[0][1] >= 23, catchups
    assert twice <= 1  # at most the last hour, if a catch-up ran before its hourly job


def test_flower_lists_the_tasks_behind_basic_auth(fresh_dbs: Databases, system: System):
    api = system.add(run_api(process_env()))
    env = process_env(API_BASE_URL=api.url, FLOWER_BASIC_AUTH="ops:flower-pass")
    flower = system.add(run_flower(env))
    worker = system.add(run_worker(env))
    # Workers send task events only once a monitor asks: Flower does, remotely.
    assert worker.wait_for_log("enabled by remote", timeout=30), worker.describe()
    job = post_job(api.url, {"date": "2025-12-08"})
    wait_for_job(job["id"], timeout=60, procs=(api, worker))
    assert httpx.get(f"{flower.url}/api/tasks", timeout=10).status_code == 401
    auth = ("ops", "flower-pass")

    def tasks_and_slices() -> tuple[dict, list]:
        tasks = httpx.get(f"{flower.url}/api/tasks", auth=auth, timeout=10).json()
        # Task events are broker-wide: count only this job's tasks on this test's worker.
        return tasks, [
            t
            for t in tasks.values()
            if t.get("name") == "workers.process_slice"
            and t.get("worker") == worker.hostname
            and str(t.get("args", "")).startswith(f"({job['id']},")
        ]

    _, (tasks, slices) = poll(
        tasks_and_slices,
        lambda seen: len(seen[1]) >= 24 and all(t["state"] == "SUCCESS" for t in seen[1]),
        timeout=20,
        interval=0.5,
    )
    assert len(slices) == 24 and {t["state"] for t in slices} == {"SUCCESS"}, tasks
