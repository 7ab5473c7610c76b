"""The system on RabbitMQ (``CELERY_BROKER_URL=amqp://...``), Celery's reference broker.

Every test runs a private RabbitMQ node (``tests/support/rabbit.py``: its own node
name, ports, cookie and data directory, started in about 3 s), so it sees only
what it made and can stop and restart the broker without touching the
machine's own RabbitMQ. The API, the workers and beat are real processes
(``tests/support/system.py``'s :class:`System`) with ``CELERY_BROKER_URL`` pointing at
that node; each test ends with the job's report checked and the target equal
to the SQL oracle, nothing missing and nothing twice.

Where RabbitMQ differs from this project's Redis, the tests assert what
RabbitMQ really does:

- a dead consumer's unacknowledged messages are redelivered as soon as its
  connection closes (Redis waits for ``visibility_timeout``): a killed
  worker's slice runs again at once, with no reconciler;
- durable queues keep their persistent messages across a clean restart
  (Redis here keeps nothing): the backlog is still there afterwards;
- ``queue_declare(passive=True)`` answers a queue's depth, and a missing
  queue closes the channel (404) without harming the next question; the
  reconciler reads that depth, leaves a full lane alone and sends again the
  slices whose messages were purged.
"""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import date, datetime

import pytest
from celery import Celery

from tests.support.jobs import slice_rows
from tests.support.procs import process_env, run_worker
from tests.support.proxies import FaultyProxy, Hold
from tests.support.rabbit import PrivateRabbit, available
from tests.support.system import FAST, System, assert_succeeded_and_right
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import until
from windfarm.config import Settings, get_settings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not available(), reason="RabbitMQ (rabbitmq-server) is not installed"),
]

RECONCILE_SENT = "Sending due task etl-reconcile"
RESENT = re.compile(r"sending (\d+) slice\(s\) of job (\d+) again")


@pytest.fixture
def rabbit(system: System) -> PrivateRabbit:
    """A private RabbitMQ node, started; closed (data deleted) after the test's processes."""
    node = PrivateRabbit()
    system.cleanups.append(node.close)
    took = node.start()
    print(f"private RabbitMQ node {node.node} on port {node.port} started in {took:.1f} s")
    return node


def lanes() -> tuple[str, str]:
    settings = get_settings()
    return settings.etl_queue, settings.etl_priority_queue


def resent(*procs) -> list[int]:
    """How many slices each "sending again" line of the logs named."""
    return [int(n) for proc in procs for n, _ in RESENT.findall(proc.log())]


# --- A job from start to end ------------------------------------------------------------


def test_a_one_day_job_runs_through_rabbitmq_each_slice_once(system: System, rabbit: PrivateRabbit):
    env = {"CELERY_BROKER_URL": rabbit.url()}
    system.start_api(**env)
    worker = system.start_worker(system.api.url, **env)
    day = date(2025, 12, 5)
    job = system.post({"date": day.isoformat()})
    system.wait(job["id"], timeout=60)

    assert_succeeded_and_right(system, job["id"], day, day)
    assert {attempts for _, attempts in slice_rows(job["id"]).values()} == {1}
    # The messages went through the private node, and none is left there.
    assert f"Connected to amqp://guest:**@127.0.0.1:{rabbit.port}//" in worker.log()
    bulk, priority = lanes()
    queues = rabbit.queues()
    assert queues[bulk] == (0, 0), queues
    assert queues.get(priority, (0, 0)) == (0, 0), queues


# --- A worker dies ------------------------------------------------------------------------


def test_a_worker_sigkilled_mid_backfill_has_its_slice_redelivered_at_once(
    system: System, rabbit: PrivateRabbit
):
    env = {"CELERY_BROKER_URL": rabbit.url()}
    api = system.start_api(**env)
    hold = Hold()
    proxy = FaultyProxy(api.url, hold.rule)
    system.cleanups.append(proxy.close)
    doomed = system.start_worker(proxy.url, name="doomed", concurrency=1, **env)
    # No beat: nothing but the broker can bring the killed worker's slice back.
    first, last = date(2025, 12, 2), date(2025, 12, 4)
    hold.armed.set()  # the doomed worker's first slice is held in its hands
    job = system.post({"start_date": first.isoformat(), "end_date": last.isoformat()})
    assert hold.caught.wait(30), doomed.describe()
    hour = hold.hour()
    assert slice_rows(job["id"])[hour] == ("running", 1)
    # Only now the survivor: it cannot take every slice before the doomed one holds one.
    survivor = system.start_worker(api.url, name="survivor", **env)

    # The whole worker dies at once, pool and all, with the slice in hand.
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.popen.wait(10)
    killed_at = time.monotonic()
    hold.release.set()
    until(
        lambda: slice_rows(job["id"])[hour][1] == 2,
        timeout=30,
        interval=0.05,
        what="the killed worker's slice runs again",
    )
    redelivered_after = time.monotonic() - killed_at

    system.wait(job["id"], timeout=90)
    assert_succeeded_and_right(system, job["id"], first, last)
    rows = slice_rows(job["id"])
    # The slice in hand ran twice (its first run never finished), every other once.
    assert rows.pop(hour) == ("succeeded", 2)
    assert {attempts for _, attempts in rows.values()} == {1}
    # RabbitMQ requeued the message the moment the connection closed: no beat runs,
    # so no reconciler sent it.
    assert resent(survivor) == []
    print(
        f"killed worker: slice {hour:%Y-%m-%d %H:%M} redelivered by RabbitMQ after "
        f"{redelivered_after:.2f} s, no reconciler"
    )


# --- The broker restarts ------------------------------------------------------------------


def test_rabbitmq_restarted_mid_backfill_keeps_its_queue_and_the_workers_reconnect(
    system: System, rabbit: PrivateRabbit
):
    env = {"CELERY_BROKER_URL": rabbit.url()}
    api = system.start_api(**env)
    # Slices of 0.2 s at least, so that the backlog outlasts the restart (a
    # node takes over a second to stop, and the workers consume meanwhile).
    slow = FaultyProxy(api.url, lambda path, n: time.sleep(0.2))
    system.cleanups.append(slow.close)
    # The workers reach the broker through a line the test can hold cut while the
    # node is back, to count what it kept before anyone consumes it.
    line = TcpProxy("127.0.0.1", rabbit.port)
    system.cleanups.append(line.close)
    via_line = f"amqp://guest:guest@127.0.0.1:{line.port}//"
    workers = [
        system.start_worker(slow.url, name=f"worker{i}", CELERY_BROKER_URL=via_line) for i in (1, 2)
    ]
    beat = system.start_beat(**env)
    first, last = date(2025, 12, 1), date(2025, 12, 10)
    job = system.post({"start_date": first.isoformat(), "end_date": last.isoformat()})
    system.wait_progress(job["id"], 10)

    bulk, _ = lanes()
    before = rabbit.ready(bulk)
    rabbit.stop()  # a clean shutdown of the node, as a service restart does
    line.cut()
    time.sleep(1)
    took = rabbit.start()
    kept = rabbit.ready(bulk)
    never_started = sum(state == "queued" for state, _ in slice_rows(job["id"]).values())
    line.restore()
    # Durable queue, persistent messages: every slice that no worker had taken
    # still has its message, and so has each slice in hand (at most one per
    # worker process: prefetch 1, late acks), whose ack could not be sent.
    # This project's Redis keeps nothing.
    assert before > 20 and never_started > 0, (before, never_started)
    assert never_started <= kept <= never_started + 2 * 2, (kept, never_started)

    system.wait(job["id"], timeout=180)
    assert_succeeded_and_right(system, job["id"], first, last)
    for worker in workers:
        log = worker.log()
        assert "Connection to broker lost" in log, worker.describe()
        assert log.count(f"Connected to amqp://guest:**@127.0.0.1:{line.port}//") >= 2
    # The messages in hand came back to a worker, which found their slices
    # ended: none ran twice for it.
    logs = "".join(worker.log() for worker in workers)
    assert logs.count("slice already ended or unknown") >= kept - never_started
    # The queue, not the reconciler, carried the backlog through: with the
    # messages lost, it would have had to send every slice never started again.
    again = resent(beat, *workers)
    assert sum(again) < never_started, again
    attempts = [a for _, a in slice_rows(job["id"]).values()]
    print(
        f"broker restart: {before} ready before the stop; {kept} kept after a {took:.1f} s "
        f"start, for {never_started} slices never started; slices run twice: "
        f"{sum(a > 1 for a in attempts)}; sent again by the reconciler: {again}"
    )


# --- The reconciler's view of the queue ---------------------------------------------------


def test_queue_length_reads_rabbitmq_and_the_reconciler_resends_a_purged_slice(
    system: System, rabbit: PrivateRabbit, monkeypatch: pytest.MonkeyPatch
):
    from windfarm import dispatch
    from windfarm.queue import configure

    bulk, priority = lanes()
    missing = f"{bulk}.nobody-declared-this"
    with monkeypatch.context() as patch:
        # This process's app talks to Redis; the questions go to an app
        # configured as every process configures it, on the private node.
        # (Celery reads CELERY_BROKER_URL from the environment before its
        # configuration: the environment must say it too.)
        url = rabbit.url()
        patch.setenv("CELERY_BROKER_URL", url)
        amqp_app = Celery("windfarm-amqp")
        configure(amqp_app, Settings(celery_broker_url=url))
        system.cleanups.append(amqp_app.close)
        patch.setattr(dispatch, "app", amqp_app)
        assert (
            amqp_app.connection_for_read()
            .as_uri()
            .startswith(f"amqp://guest:**@127.0.0.1:{rabbit.port}/")
        )
        assert "visibility_timeout" not in amqp_app.conf.broker_transport_options

        # A missing queue counts as empty, and the 404 that closes the channel
        # does not spoil the next question.
        assert dispatch.queue_length(missing) == 0
        assert dispatch.queue_length(missing) == 0
        assert rabbit.ready(missing) is None  # asking created nothing
        assert dispatch.queue_length(bulk) == 0
        hours = [datetime(2025, 12, 9, h) for h in range(7)]
        assert dispatch.publish(999_999, hours) == 7
        # Publishing does not wait for the broker to route the messages, and
        # queue_length asks on a connection of its own, which may overtake them.
        until(
            lambda: dispatch.queue_length(bulk) == 7, timeout=30, what="7 messages in the bulk lane"
        )
        for queue, expected in [(bulk, 7), (missing, 0), (bulk, 7), (priority, 0), (bulk, 7)]:
            assert dispatch.queue_length(queue) == expected, queue
        assert rabbit.queues()[bulk] == (7, 0)
        rabbit.purge(bulk)
        assert dispatch.queue_length(bulk) == 0
        # A broker that cannot answer is not an empty queue.
        rabbit.stop()
        assert dispatch.queue_length(bulk) is None
        rabbit.start()
        assert dispatch.queue_length(bulk) == 0

    # The reconciler, run by a worker of the priority lane only, sees the
    # backlog in the bulk lane and leaves it alone...
    env = {"CELERY_BROKER_URL": rabbit.url()}
    api = system.start_api(**env)
    control = system.add(
        run_worker(
            process_env(**{"API_BASE_URL": api.url, **FAST, **env}), name="control", queue=priority
        )
    )
    beat = system.start_beat(**env)
    day = date(2025, 12, 6)
    job = system.post({"date": day.isoformat()})
    until(
        lambda: rabbit.queues().get(bulk) == (24, 0),
        timeout=30,
        what="24 messages in the bulk lane",
    )
    sent_before = beat.log().count(RECONCILE_SENT)
    time.sleep(float(FAST["ETL_SLICE_TIMEOUT_S"]) + 3)
    # Passes ran meanwhile (beat sent them, the control worker took them, none
    # failed), and the slices, queued for longer than ETL_SLICE_TIMEOUT_S, stayed.
    assert beat.log().count(RECONCILE_SENT) - sent_before >= 3
    assert rabbit.ready(priority) == 0 and "raised unexpected" not in control.log()
    assert rabbit.queues()[bulk] == (24, 0)
    assert resent(control) == []
    assert {row for row in slice_rows(job["id"]).values()} == {("queued", 0)}

    # ...until the messages are lost: the lane reads empty, and every slice
    # queued longer than ETL_SLICE_TIMEOUT_S is sent again, once.
    rabbit.purge(bulk)
    until(lambda: resent(control) == [24], timeout=30, what="the purged slices sent again")
    assert until(lambda: rabbit.queues().get(bulk) == (24, 0), timeout=30, what="24 messages again")
    time.sleep(2)  # two more passes: the lane is full again, nothing more is sent
    assert resent(control) == [24]

    system.start_worker(api.url, name="worker", **env)
    system.wait(job["id"], timeout=60)
    assert_succeeded_and_right(system, job["id"], day, day)
    assert {attempts for _, attempts in slice_rows(job["id"]).values()} == {1}
    assert rabbit.queues()[bulk] == (0, 0)
    assert beat.alive()
