"""``make bench`` (bench.run) stops everything it started when it is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from datetime import date, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.support.databases import PG_URL
from tests.support.oracle import assert_target_matches_oracle
from tests.support.procs import REPO, process_env
from tests.support.waiting import poll, until
from windfarm.db import drop_database, ensure_database

pytestmark = pytest.mark.slow


def _tagged(tag: str) -> list[int]:
    """Processes whose environment carries ``tag``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"WF_BENCH_TEST_TAG={tag}".encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _all_databases() -> set[str]:
    engine = create_engine(f"{PG_URL}/postgres", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return set(conn.scalars(text("SELECT datname FROM pg_database")))
    finally:
        engine.dispose()


def _bench_databases(pid: int) -> set[str]:
    """The databases of the benchmark process ``pid`` (named after it)."""
    engine = create_engine(f"{PG_URL}/postgres", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return set(
                conn.scalars(
                    text("SELECT datname FROM pg_database WHERE datname LIKE :prefix"),
                    {"prefix": f"wf\\_bench\\_{pid}\\_%"},
                )
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_benchmark_leaves_no_process_or_database_behind(tmp_path, sig):
    tag = uuid.uuid4().hex
    bench = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--days",
            "2",
            "--workers",
            "1",
            "--no-cli",
            "--no-bookkeeping",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        env=process_env(WF_BENCH_TEST_TAG=tag),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Its API, a worker node and the node's pool child: the stack is up.
        started = until(
            lambda: _tagged(tag),
            lambda found: len(found) >= 4 and _bench_databases(bench.pid),
            timeout=120,
            alive=lambda: bench.poll() is None,
            what=lambda: f"the benchmark's stack up:\n{bench.stdout.read()}",
        )
        bench.send_signal(sig)
        output, _ = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 130, output
    assert "interrupted; stopping what it started" in output
    poll(lambda: _tagged(tag), lambda found: not found, timeout=10)
    assert _tagged(tag) == [], f"left running: {_tagged(tag)} of {started}"
    assert _bench_databases(bench.pid) == set()


def test_the_writers_benchmark_writes_every_slice_and_drops_its_database():
    from bench import writers

    figures = writers.run(2, 1, foreign_key=False)
    assert figures["slices"] == 48  # two processes, a day each
    assert figures["rows"] == 48 * 48  # 6 windows x 2 variables x 4 statistics an hour
    assert figures["postgres_cpu_ms_per_slice"] > 0
    assert not any(
        name.endswith("_writers") and f"_{os.getpid()}_" in name for name in _all_databases()
    )


def test_the_busiest_single_threaded_process_and_where_it_would_be_full():
    from bench.serial import busiest

    spent = {"api": {1: 2.0, 2: 5.0}, "consumer": {3: 1.0, 4: 2.5}, "pool": {5: 9.0}}
    spent["broker"] = {6: 0.5}
    figures = busiest(spent, wall_s=10.0, slices_per_s=400.0, broker="redis")
    assert figures["api"] == {"core_share": 0.5, "full_at": 800.0}
    assert figures["consumer"] == {"core_share": 0.25, "full_at": 1600.0}
    assert figures["broker"] == {"core_share": 0.05, "full_at": 8000.0}
    assert "pool" not in figures  # more processes of it scale: not a serial point
    # RabbitMQ's server runs many threads: a share of one core says nothing.
    assert "broker" not in busiest(spent, wall_s=10.0, slices_per_s=400.0, broker="amqp")


def test_what_the_cores_did_between_two_readings_of_proc_stat():
    from bench.serial import core_shares, core_times

    #           user nice system idle iowait irq softirq steal guest guest_nice
    before = core_times("cpu  100 0 20 300 0 0 0 0 0 0\ncpu0 50 0 10 150 0 0 0 0 0 0\n")
    after = core_times("cpu  160 10 40 350 10 5 5 20 0 0\ncpu0 80 5 20 175 5 2 3 10 0 0\n")
    assert before == {"user": 100, "system": 20, "idle": 300, "steal": 0}
    # user 70 (nice counts), system 30 (irq, softirq count), idle 60 (iowait counts), steal 20
    assert core_shares(before, after) == {
        "user": 70 / 180,
        "system": 30 / 180,
        "idle": 60 / 180,
        "steal": 20 / 180,
    }
    assert core_times("no such line") is None and core_shares(None, after) == {}
    assert core_shares(after, after) == {}  # no time passed
    now = core_times()  # this machine's own
    assert now is not None and now["idle"] >= 0 and sum(now.values()) > 0


def test_the_wait_sampler_sees_what_a_backend_waits_for():
    from bench.serial import WaitSampler
    from windfarm.db import drop_database, ensure_database

    name = f"wf_sampler_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    ensure_database(f"{PG_URL}/{name}")
    try:
        engine = create_engine(f"{PG_URL}/{name}", poolclass=NullPool)
        with engine.connect() as conn:
            sampler = WaitSampler(f"{PG_URL}/postgres", [name], every_s=0.01).start()
            conn.execute(text("SELECT pg_sleep(0.5)"))
            figures = sampler.stop()
        engine.dispose()
        assert sampler.backend_pid is not None
    finally:
        drop_database(f"{PG_URL}/{name}")
    # The one backend of the database, asleep nearly whenever it was seen: a
    # sample can catch it on CPU as the statement starts or ends.
    assert set(figures["shares"]) <= {"Timeout:PgSleep", "CPU"}
    assert figures["shares"]["Timeout:PgSleep"] >= 0.8
    assert 0 < figures["mean_active"] <= 1
    assert figures["samples"] > 0


def test_callgrind_counts_what_a_process_does_and_the_same_work_alike(tmp_path):
    """bench.instructions reads callgrind's count: a loop ten times longer costs
    about ten times the loop's instructions, and the same run counts the same."""
    from bench.instructions import callgrind, instructions

    def count(loops: int, name: str) -> int:
        dump = tmp_path / f"{name}.callgrind"
        code = f"for _ in range({loops}): pass"
        subprocess.run(
            callgrind(dump, ["-S", "-c", code]),
            env={**process_env(), "PYTHONHASHSEED": "0"},
            check=True,
            capture_output=True,
        )
        return instructions(dump)

    base, short, again, long = (
        count(0, "base"),
        count(20_000, "short"),
        count(20_000, "again"),
        count(200_000, "long"),
    )
    assert abs(again - short) < 0.01 * short
    ratio = (long - base) / (short - base)
    assert 8 < ratio < 12, ratio
    (tmp_path / "other.txt").write_text("not a dump\n")
    with pytest.raises(ValueError, match="not a callgrind dump"):
        instructions(tmp_path / "other.txt")


def test_the_briefs_etl_writes_the_oracles_statistics_and_a_second_run_changes_nothing(
    client, current_dbs
):
    from bench import brief_etl
    from bench.run import compare_statistics

    url = f"{PG_URL}/wf_test_{uuid.uuid4().hex[:8]}_brief"
    ensure_database(url)
    try:
        first, last = date(2025, 12, 1), date(2025, 12, 2)
        span = (datetime(2025, 12, 1), datetime(2025, 12, 3))
        written = brief_etl.run(client, url, first, last)
        assert written == assert_target_matches_oracle(current_dbs.source_url, url, *span) > 0
        assert brief_etl.run(client, url, first, last) == written
        assert assert_target_matches_oracle(current_dbs.source_url, url, *span) == written
        assert compare_statistics(url, url) == (written, 0)
    finally:
        drop_database(url)


def test_comparing_statistics_counts_a_changed_a_missing_and_an_extra_row(client):
    from bench import brief_etl
    from bench.run import compare_statistics

    tag = uuid.uuid4().hex[:8]
    mine, theirs = f"{PG_URL}/wf_test_{tag}_mine", f"{PG_URL}/wf_test_{tag}_theirs"
    try:
        for url in (mine, theirs):
            ensure_database(url)
            brief_etl.run(client, url, date(2025, 12, 1), date(2025, 12, 1))
        engine = create_engine(theirs, poolclass=NullPool)
        try:
            with engine.begin() as conn:
                changed, dropped = conn.execute(
                    text('SELECT "timestamp", signal_id FROM data ORDER BY 1, 2 LIMIT 2')
                ).all()
                conn.execute(
                    text(
                        "UPDATE data SET value = value * 1.001 + 1"
                        ' WHERE "timestamp" = :t AND signal_id = :s'
                    ),
                    {"t": changed[0], "s": changed[1]},
                )
                conn.execute(
                    text('DELETE FROM data WHERE "timestamp" = :t AND signal_id = :s'),
                    {"t": dropped[0], "s": dropped[1]},
                )
                conn.execute(
                    text("INSERT INTO data VALUES ('2030-01-01', :s, 1.0)"), {"s": changed[1]}
                )
        finally:
            engine.dispose()
        rows, differing = compare_statistics(mine, theirs)
        assert rows == 24 * 6 * 8
        assert differing == 3
    finally:
        drop_database(mine)
        drop_database(theirs)
