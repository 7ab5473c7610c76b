"""Faults injected into a running system of real processes: the API under
uvicorn, Celery workers, beat (reconciling every second), Redis, PostgreSQL.

Every test ends the same way: each job is reported truthfully by
``GET /jobs/{id}`` (status, counts, errors, rows written), and the target
equals the SQL oracle row for row, with no duplicates. See docs/guarantees.md
for the guarantee each test proves.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from urllib.parse import urlsplit

import pytest
from sqlalchemy.engine import make_url

from tests.support.jobs import slice_rows
from tests.support.procs import queue_length
from tests.support.proxies import FaultyProxy, Hold
from tests.support.system import PrivateRedis, System, assert_succeeded_and_right
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import sample, until

pytestmark = pytest.mark.slow

# --- The API fails for a while ---------------------------------------------------------


def test_api_5xx_timeouts_resets_and_refusals_for_a_while_are_retried(system: System):
    api = system.start_api()
    http_timeout_s = 1.0
    faults_after, faults_for_s = 30, 6.0
    began: list[float] = []
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def rule(path: str, n: int):
        if n < faults_after:
            return None
        with lock:
            began[:] = began or [time.monotonic()]
            if time.monotonic() - began[0] > faults_for_s:
                return None
            kind = ("503", "500", "timeout", "reset")[n % 4]
            seen[kind] += 1
        if kind == "timeout":
            time.sleep(http_timeout_s + 0.5)  # the worker has given up by now
            return 503, {"detail": "too late"}
        if kind == "reset":
            return FaultyProxy.RESET
        return int(kind), {"detail": f"upstream says {kind}"}

    faulty = FaultyProxy(api.url, rule)
    system.cleanups.append(faulty.close)
    # The worker reaches the faulty API through a line that can also be cut.
    line = TcpProxy("127.0.0.1", urlsplit(faulty.url).port)
    system.cleanups.append(line.close)
    worker = system.start_worker(
        f"http://127.0.0.1:{line.port}",
        ETL_HTTP_TIMEOUT_S=str(http_timeout_s),
        ETL_MAX_RETRIES="20",
    )
    system.start_beat()
    first, last = date(2025, 12, 1), date(2025, 12, 5)
    job = system.post({"start_date": first.isoformat(), "end_date": last.isoformat()})

    until(lambda: began, timeout=30, interval=0.05, what="the first fault", procs=(worker,))
    time.sleep(2)
    line.cut()  # the API is gone altogether: connections refused, open ones reset
    time.sleep(2)
    line.restore()
    system.wait(job["id"], timeout=120)

    assert_succeeded_and_right(system, job["id"], first, last)
    assert all(seen[kind] for kind in ("503", "500", "timeout", "reset")), seen
    retried = [a for _, a in slice_rows(job["id"]).values() if a > 1]
    assert retried, "no slice met a fault"
    log = worker.log()
    for symptom in (
        "HTTP 503: upstream says 503",
        "HTTP 500: upstream says 500",
        "timed out",
        "API unreachable (ConnectError",
    ):
        assert symptom in log, symptom
    assert "ReadError" in log or "RemoteProtocolError" in log
    print(
        f"API faults: {dict(seen)} and 2 s of refused connections; "
        f"{len(retried)} slices retried, up to {max(retried)} attempts"
    )


def test_a_4xx_fails_its_slice_at_once_and_posting_the_day_again_fixes_it(system: System):
    api = system.start_api()
    broken = threading.Event()
    broken.set()
    hour = "2025-12-06T05:00:00"

    def rule(path: str, n: int):
        if broken.is_set() and f"start={hour}" in path:
            return 403, {"detail": "forbidden by the gateway"}
        return None

    faulty = FaultyProxy(api.url, rule)
    system.cleanups.append(faulty.close)
    system.start_worker(faulty.url)
    system.start_beat()
    day = date(2025, 12, 6)
    first_job = system.post({"date": day.isoformat()})
    shown = system.wait(first_job["id"])

    assert shown["status"] == "failed", shown
    assert (shown["slices_succeeded"], shown["slices_failed"], shown["slices_pending"]) == (
        23,
        1,
        0,
    ), shown
    assert shown["finished_at"] is not None
    [error] = shown["errors"]
    assert error["slice_start"] == hour
    assert error["message"].endswith("answered HTTP 403: forbidden by the gateway")
    assert "gave up" not in error["message"]  # failed at once, not after retries
    assert slice_rows(first_job["id"])[datetime.fromisoformat(hour)] == ("failed", 1)
    time.sleep(3)  # three reconciler passes: a failed slice is final, nobody resends it
    assert faulty.count(f"start={hour}") == 1
    assert system.job(first_job["id"]) == shown

    broken.clear()  # the gateway is fixed; the operator posts the day again
    second_job = system.post({"date": day.isoformat()})
    system.wait(second_job["id"])
    assert_succeeded_and_right(system, second_job["id"], day, day)
    assert system.job(first_job["id"])["status"] == "failed"  # history stays true
    assert faulty.count(f"start={hour}") == 2


# --- The target database goes away ----------------------------------------------------


def test_the_target_database_unreachable_for_20_s_mid_backfill(system: System):
    target = make_url(system.dbs.target_url)
    line = TcpProxy(target.host, target.port or 5432)
    system.cleanups.append(line.close)
    # The API writes to the target directly: the job is posted before the cut,
    # and GET /jobs keeps telling the truth during it. Workers (and the
    # reconciler they run) reach the target only through the line.
    system.start_api()
    via_line = target.set(host="127.0.0.1", port=line.port).render_as_string(hide_password=False)
    worker = system.start_worker(system.api.url, TARGET_DATABASE_URL=via_line)
    system.start_beat(TARGET_DATABASE_URL=via_line)
    first, last = date(2025, 12, 1), date(2025, 12, 10)
    job = system.post({"start_date": first.isoformat(), "end_date": last.isoformat()})
    system.wait_progress(job["id"], 20)

    line.cut()
    during = sample(lambda: system.job(job["id"]), seconds=20)
    line.restore()

    assert {j["status"] for j in during} == {"running"}
    assert during[0]["slices_succeeded"] < 240
    # Nothing can commit without the database: no progress after the first second.
    assert during[-1]["slices_succeeded"] == during[1]["slices_succeeded"]
    system.wait(job["id"], timeout=120)
    assert_succeeded_and_right(system, job["id"], first, last)
    # Retries (at most 1+2+2+...+2 = 15 s here) ran out during the outage: the
    # slices they left open were sent again by the reconciler, none was failed.
    log = worker.log()
    assert "target database unavailable" in log and "left to the reconciler" in log
    assert re.search(r"sending \d+ slice\(s\) of job \d+ again", log)
    print(
        f"target outage: 20 s with {during[-1]['slices_succeeded']} of 240 slices done, "
        f"{log.count('left to the reconciler')} slices left to the reconciler"
    )


# --- The broker loses its messages ----------------------------------------------------


def test_redis_restarted_with_its_queue_lost_mid_backfill(system: System):
    broker = PrivateRedis()
    broker.start()
    system.cleanups.append(broker.stop)
    env = {"CELERY_BROKER_URL": broker.url}
    system.start_api(**env)
    worker = system.start_worker(system.api.url, **env)
    system.start_beat(**env)
    first, last = date(2025, 12, 1), date(2025, 12, 10)
    job = system.post({"start_date": first.isoformat(), "end_date": last.isoformat()})
    system.wait_progress(job["id"], 10)

    queue = os.environ["ETL_QUEUE"]
    waiting = queue_length(broker.url, queue)
    broker.restart(down_for=1)  # nothing on disk: every queued message is gone
    assert waiting > 20 and queue_length(broker.url, queue) == 0

    system.wait(job["id"], timeout=120)
    assert_succeeded_and_right(system, job["id"], first, last)
    assert re.search(r"sending \d+ slice\(s\) of job \d+ again", worker.log())
    print(f"broker restart: {waiting} queued messages lost and recovered")


# --- Workers die -------------------------------------------------------------------------


def test_a_worker_sigkilled_and_another_sigtermed_mid_task_lose_nothing(system: System):
    api = system.start_api()
    held = {"killed": Hold(), "stopped": Hold()}
    workers = {}
    for name, hold in held.items():
        proxy = FaultyProxy(api.url, hold.rule)
        system.cleanups.append(proxy.close)
        workers[name] = system.start_worker(proxy.url, name=name, concurrency=1)
    system.start_beat()
    first, last = date(2025, 12, 2), date(2025, 12, 4)
    job = system.post({"start_date": first.isoformat(), "end_date": last.isoformat()})
    system.wait_progress(job["id"], 3)
    for hold in held.values():
        hold.armed.set()
    for name, hold in held.items():
        assert hold.caught.wait(30), workers[name].describe()

    # One worker dies at once, pool and all; the other is asked to stop.
    killed, stopped = workers["killed"], workers["stopped"]
    os.killpg(killed.pid, signal.SIGKILL)
    killed.popen.wait(10)
    os.kill(stopped.pid, signal.SIGTERM)
    time.sleep(1.5)
    assert stopped.alive(), "a warm shutdown waits for the task in hand"
    assert slice_rows(job["id"])[held["stopped"].hour()] == ("running", 1)
    held["stopped"].release.set()
    assert stopped.popen.wait(20) == 0
    assert "Warm shutdown" in stopped.log()
    # The stopped worker finished its slice before it exited.
    assert slice_rows(job["id"])[held["stopped"].hour()] == ("succeeded", 1)
    held["killed"].release.set()
    assert slice_rows(job["id"])[held["killed"].hour()][0] == "running"

    system.start_worker(api.url, name="survivor")
    system.wait(job["id"], timeout=90)
    assert_succeeded_and_right(system, job["id"], first, last)
    # The killed worker's slice was found by the reconciler and run again.
    assert slice_rows(job["id"])[held["killed"].hour()] == ("succeeded", 2)


# --- The same work twice -----------------------------------------------------------------


def test_the_same_day_posted_twice_at_once_and_overlapping_jobs_all_complete(system: System):
    system.start_api()
    for name in ("worker1", "worker2"):
        system.start_worker(system.api.url, name=name)
    system.start_beat()
    wide = system.post({"start_date": "2025-12-01", "end_date": "2025-12-05"})
    system.wait_progress(wide["id"], 5)

    barrier = threading.Barrier(2)

    def post_the_day(_: int) -> dict:
        barrier.wait(10)
        # force: each a job of its own, though the wide job covers the day.
        return system.post({"date": "2025-12-03", "force": True})

    with ThreadPoolExecutor(2) as pool:
        twins = list(pool.map(post_the_day, range(2)))
    inner = system.post({"start_date": "2025-12-02", "end_date": "2025-12-04", "force": True})
    assert len({wide["id"], inner["id"], *(t["id"] for t in twins)}) == 4

    expected = [
        (wide, date(2025, 12, 1), date(2025, 12, 5)),
        (inner, date(2025, 12, 2), date(2025, 12, 4)),
        *((twin, date(2025, 12, 3), date(2025, 12, 3)) for twin in twins),
    ]
    for job, _, _ in expected:
        system.wait(job["id"], timeout=90)
    for job, first, last in expected:
        assert_succeeded_and_right(system, job["id"], first, last)
