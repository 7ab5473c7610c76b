"""``python -m workers.etl`` in a subprocess, against real servers and workers."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime, timedelta

from sqlalchemy import text

from tests.support.jobs import slice_rows
from tests.support.oracle import assert_target_matches_oracle
from tests.support.procs import REPO, free_port, process_env
from windfarm.db import target_engine


def etl(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workers.etl", *args],
        cwd=REPO,
        env=process_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def job_slices(job_id: int) -> list[tuple]:
    """(state, sent, error) of each slice of a job, in order of its hour."""
    return list(slice_rows(job_id, "state", "enqueued_at IS NOT NULL", "error").values())


def job_id_of(output: str) -> int:
    return int(re.search(r"job (\d+)", output).group(1))


def test_a_day_in_process_against_a_real_api(dbs, api_server):
    done = etl("--date", "2025-12-04", API_BASE_URL=api_server.url)
    assert done.returncode == 0, done.stderr
    assert "24 slices, 24 succeeded, 0 failed" in done.stdout
    day = datetime(2025, 12, 4)
    compared = assert_target_matches_oracle(
        dbs.source_url, dbs.target_url, day, day + timedelta(days=1)
    )
    assert f"{compared} rows written" in done.stdout
    assert {s[0] for s in job_slices(job_id_of(done.stdout))} == {"succeeded"}


def test_bad_arguments_exit_non_zero_with_a_message(dbs):
    cases = [
        (["--date", "2025-13-45"], "'2025-13-45' is not a date like 2025-12-05"),
        (["--start", "2025-12-05", "--end", "2025-12-01"], "--end 2025-12-01 is before --start"),
        (["--start", "2025-12-05"], "give --date, or both --start and --end"),
        (["--date", "2025-12-05", "--wait"], "add --enqueue"),
    ]
    for args, message in cases:
        done = etl(*args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
    too_long = etl("--start", "2025-12-01", "--end", "2025-12-03", JOBS_MAX_DAYS="2")
    assert too_long.returncode == 2 and "more than 2 days (JOBS_MAX_DAYS)" in too_long.stderr
    far = etl("--date", "9999-12-31")
    assert far.returncode == 2 and "the hours of 9999-12-31 cannot be represented" in far.stderr


def test_an_unreachable_api_stops_the_run_and_hands_the_job_to_the_workers(dbs):
    done = etl("--date", "2025-12-05", API_BASE_URL=f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("etl: stopped at slice 2025-12-05T00:00:00")
    assert "API unreachable" in line and "stay open, for workers to take over" in line
    job_id = job_id_of(line)
    try:
        # A transient cause fails nothing: the slice waits with its reason, the
        # rest are unsent, for the reconciler to send to the workers.
        states = job_slices(job_id)
        assert states[0][:2] == ("waiting", True) and "API unreachable" in states[0][2]
        assert states[1:] == [("queued", False, None)] * 23
    finally:  # no other test's reconciler should find (and send) them
        with target_engine().begin() as conn:
            conn.execute(text("DELETE FROM etl_job WHERE id = :j"), {"j": job_id})


def test_enqueue_and_wait_with_a_real_worker(dbs, worker):
    done = etl("--date", "2025-12-01", "--enqueue", "--wait", "--timeout", "60")
    assert done.returncode == 0, done.stderr + worker.describe()
    assert "24 of 24 slices sent" in done.stdout
    assert "succeeded: 24 succeeded, 0 failed" in done.stdout
    assert "] 24/24 slices" in done.stderr and "[" + "#" * 30 + "]" in done.stderr
    assert "\r" not in done.stderr  # not a terminal: no redrawn frames
    day = datetime(2025, 12, 1)
    assert_target_matches_oracle(dbs.source_url, dbs.target_url, day, day + timedelta(days=1))


def test_enqueue_to_a_dead_broker_fails_fast_and_keeps_the_job(dbs):
    done = etl(
        "--date", "2025-12-10", "--enqueue", CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/15"
    )
    assert done.returncode == 1
    assert "0 of 24 slices sent" in done.stdout
    assert "the broker did not take every slice" in done.stderr
    job_id = job_id_of(done.stdout)
    try:
        # Stored durably and unsent: the reconciler's to send.
        assert job_slices(job_id) == [("queued", False, None)] * 24
    finally:  # no other test's reconciler should find (and send) them
        with target_engine().begin() as conn:
            conn.execute(text("DELETE FROM etl_job WHERE id = :j"), {"j": job_id})
