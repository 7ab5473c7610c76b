"""The guarantees under pressure, with real processes: a burst of posts, a year
of backlog in front of scheduled work and recovery, an API outage longer than
the retries, two copies of one hour racing a correction, an emptied source.

Like tests/test_faults.py, every test ends with each job reported truthfully
and the target equal to the SQL oracle. Timings are printed, not asserted
(``make bench`` reports them); the assertions are about behaviour.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from sqlalchemy import text

from api.seed_source import seed
from tests.support.jobs import slice_row
from tests.support.oracle import actual_rows, assert_target_matches_oracle
from tests.support.procs import process_env, queue_length, run_api
from tests.support.proxies import FaultyProxy
from tests.support.system import System, assert_succeeded_and_right, day_start
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import ended, poll, sample, until
from windfarm.db import drop_database, target_engine
from windfarm.timeutil import HOUR

pytestmark = pytest.mark.slow

BURST = 40


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# Asks GET /health every 50 ms until its standard input closes; prints
# "status seconds" a line. A process of its own: the 40 posting threads of
# the test's process would otherwise delay its clock with theirs.
_HEALTH_WATCHER = """
import sys, threading, time, httpx
url, stop = sys.argv[1], threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
with httpx.Client(timeout=30) as client:
    while not stop.is_set():
        began = time.monotonic()
        status = client.get(url).status_code
        print(status, time.monotonic() - began, flush=True)
        time.sleep(0.05)
"""


def test_a_burst_of_posts_is_answered_and_every_send_recorded_once(system: System):
    api = system.start_api()

    def post(i: int) -> tuple[int, float, dict]:
        began = time.monotonic()
        day = date(2025, 11, 1) + timedelta(days=i)
        response = httpx.post(f"{api.url}/jobs", json={"date": day.isoformat()}, timeout=60)
        return response.status_code, time.monotonic() - began, response.json()

    watcher = subprocess.Popen(
        [sys.executable, "-c", _HEALTH_WATCHER, f"{api.url}/health"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        poll(lambda: httpx.get(f"{api.url}/health").status_code, lambda s: s == 200, timeout=30)
        time.sleep(0.3)  # the watcher is asking
        with ThreadPoolExecutor(BURST) as pool:
            answers = list(pool.map(post, range(BURST)))
        # The sends run after the answers; let them finish while /health is watched.
        poll(_queued, lambda queued: queued >= BURST * 24, timeout=60)
    finally:
        output, _ = watcher.communicate("", timeout=60)
    health = [(int(status), float(took)) for status, took in map(str.split, output.splitlines())]
    assert len(health) >= 2, output

    assert [status for status, _, _ in answers] == [202] * BURST, answers
    assert {status for status, _ in health} == {200}, health
    # Every slice sent once and recorded once: no worker runs, so every message waits.
    assert _recorded_sends() == BURST * 24
    time.sleep(1)  # nothing more arrives
    assert _queued() == BURST * 24
    assert "could not record" not in api.log()
    slowest = max(took for _, took, _ in answers)
    worst_health = max(took for _, took in health)
    print(
        f"burst of {BURST} posts: slowest answer {slowest:.2f} s; /health p99 "
        f"{_percentile([t for _, t in health], 99) * 1000:.0f} ms, worst "
        f"{worst_health * 1000:.0f} ms over {len(health)} checks"
    )


def _queued() -> int:
    return queue_length(os.environ["CELERY_BROKER_URL"], os.environ["ETL_QUEUE"])


def _recorded_sends() -> int:
    with target_engine().connect() as conn:
        return conn.scalar(text("SELECT count(*) FROM etl_slice WHERE enqueued_at IS NOT NULL"))


def _lose_one_message(queue: str, *, position: int) -> tuple[int, datetime]:
    """Delete the message ``position`` places from the head of ``queue``; its slice."""
    client = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
    try:
        # kombu pushes on the left and pops on the right: the head is index -1.
        raw = client.lindex(queue, -position)
        assert raw is not None, f"{queue} holds fewer than {position} messages"
        assert client.lrem(queue, 1, raw) == 1
    finally:
        client.close()
    job_id, start = re.match(
        r"\((\d+), '([^']+)'\)", json.loads(raw)["headers"]["argsrepr"]
    ).groups()
    return int(job_id), datetime.fromisoformat(start)


def test_scheduled_work_and_recovery_keep_their_cadence_behind_a_year_of_backlog(
    system: System,
):
    api = system.start_api()
    # The catch-up runs on the workers, which read its setting.
    worker = system.start_worker(api.url, concurrency=1, ETL_CATCHUP_DAYS="1")
    backlog = system.post({"start_date": "2025-01-01", "end_date": "2026-01-01"})
    assert backlog["slices_total"] == 366 * 24
    system.wait_progress(backlog["id"], 20)
    queue = os.environ["ETL_QUEUE"]
    until(  # still publishing
        lambda: queue_length(os.environ["CELERY_BROKER_URL"], queue),
        lambda queued: queued >= 6000,
        timeout=60,
        interval=0.1,
        what=lambda: f"6000 messages queued: {system.job(backlog['id'])}",
    )

    # A message lost in the middle of the backlog: taken from the broker, as a
    # worker dying with it in hand would leave it.
    lost_job, lost_hour = _lose_one_message(queue, position=200)
    lost_at, lost_since = time.monotonic(), _db_now()

    # Beat starts now, with a day of catch-up: at start it sends the hourly job,
    # whose hour and catch-up must not wait for the 8,000 slices in front of them.
    beat_started = time.monotonic()
    system.start_beat(ETL_CATCHUP_DAYS="1")
    scheduled = _wait_for_jobs(system, ("hourly", "catchup"), timeout=60)
    hourly_took = time.monotonic() - beat_started
    backlog_then = system.job(backlog["id"])
    assert [j["status"] for j in scheduled] == ["succeeded", "succeeded"], scheduled
    assert backlog_then["slices_pending"] > 4000, backlog_then  # the backlog is still there

    # The lost slice is sent again once the workers have gone past its place,
    # while the backlog is still there (to its lane's end: it runs in turn).
    until(
        lambda: slice_row(lost_job, lost_hour, "enqueued_at").enqueued_at,
        lambda sent_at: sent_at >= lost_since,
        timeout=60,
        what="the lost slice sent again",
        procs=(worker,),
    )
    resent_took = time.monotonic() - lost_at
    still_queued = queue_length(os.environ["CELERY_BROKER_URL"], queue)
    assert still_queued > 1000, "sent again only after the backlog drained"
    assert re.search(rf"sending 1 slice\(s\) of job {lost_job} again", worker.log())
    # Reconciler passes ran all along, none discarded as expired behind the backlog.
    assert "Discarding revoked task" not in worker.log()

    shown = system.wait(backlog["id"], timeout=600)
    assert_succeeded_and_right(system, backlog["id"], date(2025, 1, 1), date(2026, 1, 1))
    assert shown["slices_succeeded"] == 366 * 24
    print(
        f"behind {backlog['slices_total']} queued slices and one worker process: beat's "
        f"hourly job and catch-up done {hourly_took:.1f} s after beat started; a lost "
        f"message sent again {resent_took:.1f} s after it was lost, with {still_queued} "
        "messages still queued"
    )


def _db_now() -> datetime:
    with target_engine().connect() as conn:
        return conn.scalar(text("SELECT timezone('utc', now())"))


def _wait_for_jobs(system: System, origins: tuple[str, ...], *, timeout: float) -> list[dict]:
    """The newest job of each origin, once all of them have ended."""

    def newest() -> list[dict | None]:
        found = []
        for origin in origins:
            listed = httpx.get(
                f"{system.api.url}/jobs", params={"origin": origin, "limit": 1}, timeout=30
            ).json()
            found.append(listed[0] if listed else None)
        return found

    return until(
        newest,
        lambda found: all(ended(j) for j in found),
        timeout=timeout,
        what=f"the newest {' and '.join(origins)} jobs to end",
        procs=system.procs,
    )


def test_an_api_outage_longer_than_the_retries_ends_succeeded_without_a_repost(
    system: System,
):
    api = system.start_api()
    # Paced at 0.1 s a fetch (2 processes: the 48 slices take 2.4 s at least),
    # so the cut comes while most of the job is still to do, however fast the
    # rest of the pipeline.
    paced = FaultyProxy(api.url, lambda path, n: time.sleep(0.1))
    system.cleanups.append(paced.close)
    line = TcpProxy("127.0.0.1", urlsplit(paced.url).port)
    system.cleanups.append(line.close)
    # Retries that last about 3 s (1 + 2 s at most), then the slice waits.
    worker = system.start_worker(
        f"http://127.0.0.1:{line.port}",
        ETL_MAX_RETRIES="2",
        ETL_RETRY_BACKOFF_MAX_S="2",
        ETL_HTTP_TIMEOUT_S="2",
        ETL_WAIT_MAX_S="8",
    )
    system.start_beat(ETL_WAIT_MAX_S="8")
    first, last = date(2025, 12, 1), date(2025, 12, 2)
    job = system.post({"start_date": first.isoformat(), "end_date": last.isoformat()})
    system.wait_progress(job["id"], 5)

    line.cut()  # the API is gone: connections refused
    during = sample(lambda: system.job(job["id"]), seconds=30)
    line.restore()

    # Nothing failed; slices waited, with their reason, and the job said so.
    assert during[0]["slices_succeeded"] < 48
    assert {j["status"] for j in during} == {"running"}
    assert all(j["slices_failed"] == 0 for j in during)
    waited = max(during, key=lambda j: j["slices_waiting"])
    assert waited["slices_waiting"] > 0
    assert all("API unreachable" in w["message"] for w in waited["waiting"]), waited
    shown = system.wait(job["id"], timeout=120)
    assert_succeeded_and_right(system, job["id"], first, last)
    assert shown["errors"] == [] and shown["waiting"] == []
    posted = httpx.get(f"{api.url}/jobs", params={"origin": "api"}, timeout=10).json()
    assert [j["id"] for j in posted] == [job["id"]]  # no re-post
    print(
        f"30 s API outage: up to {waited['slices_waiting']} slices waiting at once; "
        f"{worker.log().count(' waits: ')} waits in all; the job succeeded"
    )


def test_an_older_read_never_overwrites_a_newer_one(system: System):
    api = system.start_api()
    hour = "2025-12-04T10:00:00"
    answered, release = threading.Event(), threading.Event()
    held: list[str] = []

    def hold_first_answer(path: str, n: int):
        if f"start={hour}" not in path or held:
            return None
        held.append(path)
        # The API answers now, from the source as it is; the answer is delivered late.
        upstream = httpx.get(api.url + path, timeout=30)
        answered.set()
        release.wait(60)
        return upstream.status_code, upstream.content

    slow = FaultyProxy(api.url, hold_first_answer)
    system.cleanups.append(slow.close)
    system.start_worker(slow.url, name="slow", concurrency=1)
    day = date(2025, 12, 4)
    first = system.post({"date": day.isoformat()})
    assert answered.wait(30)

    # The source is corrected while the old answer is in flight, and the day is
    # posted again, to a second worker that reads the API directly.
    h10 = datetime.fromisoformat(hour)
    _exec(
        system.dbs.source_url,
        "UPDATE data SET power = power + 3.5, wind_speed = 0.25 "
        'WHERE "timestamp" >= :s AND "timestamp" < :e',
        s=h10,
        e=h10 + HOUR,
    )
    system.start_worker(api.url, name="fast")
    # force: a job of its own, though the first one (still open) covers the day.
    second = system.post({"date": day.isoformat(), "force": True})
    time.sleep(3)  # the second copy of 10:00 waits for the first, which holds the hour
    assert slice_row(second["id"], h10).state in ("queued", "running")
    release.set()
    for job in (first, second):
        system.wait(job["id"], timeout=90)
    for job in (first, second):
        assert_succeeded_and_right(system, job["id"], day, day)
    rows = actual_rows(system.dbs.target_url, h10, h10 + HOUR)
    assert rows[(h10, "wind_speed_max_10m")] == 0.25  # the newer read, written last


def _exec(url: str, sql: str, **params) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), params)
    finally:
        engine.dispose()


def test_an_emptied_source_erases_nothing_unless_the_job_asks(system: System):
    api = system.start_api()
    worker = system.start_worker(api.url)
    day = date(2025, 12, 6)
    done = system.post({"date": day.isoformat()})
    system.wait(done["id"])
    start, end = day_start(day), day_start(day + timedelta(days=1))
    before = actual_rows(system.dbs.target_url, start, end)
    worker.stop()

    # An API pointed at an empty source database: both healthy, no rows at all.
    empty_url = system.dbs.source_url.replace("_source", "_empty_source")
    seed(empty_url)
    _exec(empty_url, "TRUNCATE data")
    try:
        wrong = system.add(run_api(process_env(SOURCE_DATABASE_URL=empty_url), name="api-empty"))
        system.start_worker(wrong.url, name="misconfigured")
        refused = system.post({"date": day.isoformat()}, api=wrong)
        shown = system.wait(refused["id"])
        assert (shown["status"], shown["slices_failed"]) == ("failed", 24), shown
        assert all(
            "has no rows for" in e["message"] and "nothing was erased" in e["message"]
            for e in shown["errors"]
        )
        assert actual_rows(system.dbs.target_url, start, end) == before
        assert_target_matches_oracle(system.dbs.source_url, system.dbs.target_url, start, end)
        # Asked for explicitly, the same job erases the day.
        erasing = system.post({"date": day.isoformat(), "allow_empty": True}, api=wrong)
        shown = system.wait(erasing["id"])
        assert (shown["status"], shown["rows_written"]) == ("succeeded", 0), shown
        assert actual_rows(system.dbs.target_url, start, end) == {}
    finally:
        for proc in system.procs[2:]:
            proc.stop()
        drop_database(empty_url)
