"""One logging setup for every process (windfarm/logs.py): formats, slice
fields, levels and the known noise, in process; then what real API, worker,
beat and CLI processes write during real jobs, in JSON and at INFO."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import time
from datetime import date

import httpx
import pytest

from tests.support.jobs import post_job
from tests.support.procs import REPO, Proc, free_port, process_env, start
from tests.support.waiting import wait_for_job
from windfarm import logs

TOUCHED = (
    "",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "celery.app.trace",
    *logs.QUIET,
    *logs.QUIET_BUT_IN_DEBUG,
)


@pytest.fixture
def restore_logging():
    """Put back the loggers that a test's setup_logging() changes."""
    saved = {
        name: (lg.level, list(lg.handlers), list(lg.filters), lg.propagate)
        for name in TOUCHED
        for lg in [logging.getLogger(name)]
    }
    yield
    for name, (level, handlers, filters, propagate) in saved.items():
        lg = logging.getLogger(name)
        lg.level, lg.handlers, lg.filters, lg.propagate = level, handlers, filters, propagate


def emit(fmt: str, *records: tuple[int, str, dict]) -> list[str]:
    """Log ``(level, message, extra)`` records through the setup's formatter and filter."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.formatter(fmt))
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger("tests.logs")
    logger.handlers, logger.propagate, logger.level = [handler], False, logging.DEBUG
    for level, message, extra in records:
        logger.log(level, message, extra=extra)
    return out.getvalue().splitlines()


# --- In process -------------------------------------------------------------------------


def test_text_lines_end_with_the_slice_fields_of_their_context():
    with logs.slice_context(7, "2025-12-05T03:00:00"):
        inside = emit("text", (logging.WARNING, "slice failed: HTTP 404", {}))
    outside = emit(
        "text", (logging.INFO, "job 7 stored", {"job_id": 7}), (logging.INFO, "no context", {})
    )
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING MainProcess tests\.logs: "
        r"slice failed: HTTP 404 \[job_id=7 slice=2025-12-05T03:00:00\]",
        inside[0],
    ), inside
    assert outside[0].endswith("job 7 stored [job_id=7]")
    assert outside[1].endswith("tests.logs: no context")


def test_json_lines_are_objects_with_the_fields_as_keys():
    from datetime import datetime

    with logs.slice_context(7, datetime(2025, 12, 5, 3)):
        lines = emit("json", (logging.INFO, "done", {"rows_written": 36}))
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("tests.logs").exception("unexpected error")
    first = json.loads(lines[0])
    assert first["message"] == "done" and first["level"] == "INFO"
    assert (first["job_id"], first["slice"], first["rows_written"]) == (
        7,
        "2025-12-05T03:00:00",
        36,
    )
    assert first["logger"] == "tests.logs" and first["time"].endswith("Z")
    assert "process" in first


def test_setup_keeps_other_handlers_replaces_its_own_and_quiets_the_noise(restore_logging):
    other = logging.NullHandler()
    logging.getLogger().addHandler(other)
    logs.setup_logging(level="warning", fmt="json")
    logs.setup_logging(level="INFO", fmt="text")
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, logs._Ours)]
    assert len(ours) == 1 and other in root.handlers
    assert root.level == ours[0].level == logging.INFO
    assert isinstance(ours[0].formatter, logs.TextFormatter)
    assert logging.getLogger("httpx").level == logging.WARNING
    assert logging.getLogger("flower.inspector").level == logging.ERROR
    assert logging.getLogger("celery.worker.strategy").level == logging.WARNING
    assert logging.getLogger("uvicorn.access").handlers == []
    logs.setup_logging(level="DEBUG")
    assert logging.getLogger("celery.worker.strategy").level == logging.NOTSET
    with pytest.raises(ValueError, match="LOG_LEVEL must be"):
        logs.setup_logging(level="loud")


def test_successful_requests_and_tasks_are_logged_only_at_debug(restore_logging):
    from celery.app.trace import LOG_SUCCESS

    logs._celery_setup()  # what Celery's setup_logging signal runs

    def passes(logger: str, msg: str, args) -> bool:
        record = logging.LogRecord(logger, logging.INFO, __file__, 1, msg, args, None)
        return logging.getLogger(logger).filter(record)

    access = '%s - "%s %s HTTP/%s" %d'
    assert not passes("uvicorn.access", access, ("127.0.0.1:5", "GET", "/data", "1.1", 200))
    assert passes("uvicorn.access", access, ("127.0.0.1:5", "GET", "/data", "1.1", 503))
    assert not passes(
        "celery.app.trace",
        LOG_SUCCESS,
        {"name": "t", "id": "1", "runtime": 0.1, "return_value": 36},
    )
    assert passes(
        "celery.app.trace",
        "Task %(name)s[%(id)s] %(description)s: %(exc)s",
        {"name": "t", "id": "1", "description": "raised expected", "exc": "x"},
    )
    logs.setup_logging(level="DEBUG")
    assert passes("uvicorn.access", access, ("127.0.0.1:5", "GET", "/data", "1.1", 200))
    assert passes(
        "celery.app.trace",
        LOG_SUCCESS,
        {"name": "t", "id": "1", "runtime": 0.1, "return_value": 36},
    )


# --- Real processes ------------------------------------------------------------------------


def lines_after(proc: Proc, offset: int) -> list[str]:
    return [line for line in proc.log()[offset:].splitlines() if line.strip()]


def parsed(proc: Proc, offset: int) -> list[dict]:
    """Every line ``proc`` wrote after ``offset``, each a JSON object."""
    records = []
    for line in lines_after(proc, offset):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{proc.name} wrote a line that is not JSON: {line!r}\n{proc.describe()}")
    return records


def test_every_line_of_a_job_is_json_with_the_slice_fields(fresh_dbs, metrics_api, worker_factory):
    env = {"LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"}
    api = metrics_api(**env)
    worker = worker_factory(api.url, concurrency=2, **env)
    api_from, worker_from = len(api.log()), len(worker.log())
    job_id = post_job(api.url, {"date": date(2025, 12, 6).isoformat()})["id"]
    wait_for_job(job_id, timeout=60, procs=(api, worker))
    time.sleep(0.5)  # the last lines after the job's end

    records = parsed(worker, worker_from)
    done = [r for r in records if r["message"].startswith("slice succeeded")]
    assert len(done) == 24 and all(r["job_id"] == job_id and r["level"] == "DEBUG" for r in done)
    assert {r["slice"] for r in done} == {f"2025-12-06T{h:02}:00:00" for h in range(24)}
    [ended] = [r for r in records if r["message"].startswith(f"job {job_id} ")]
    assert (ended["level"], ended["job_id"], ended["job_status"]) == ("INFO", job_id, "succeeded")
    assert all("job_id" in r for r in records if r["logger"].startswith("workers."))

    records = parsed(api, api_from)
    [stored] = [r for r in records if r["message"].startswith(f"job {job_id} stored")]
    assert (stored["job_id"], stored["slices_total"]) == (job_id, 24)
    posted = [r for r in records if r["logger"] == "uvicorn.access" and r.get("path") == "/jobs"]
    assert [(r["method"], r["status"]) for r in posted] == [("POST", 202)]


def test_the_served_api_logs_an_access_line_for_errors_only_above_debug(fresh_dbs, api_factory):
    api = api_factory(LOG_FORMAT="json", LOG_LEVEL="INFO")
    start = len(api.log())
    day = {"start": "2025-12-05T00:00:00", "end": "2025-12-05T00:59:00"}
    assert httpx.get(f"{api.url}/data", params=day).status_code == 200
    assert httpx.get(f"{api.url}/data", params={"start": "yesterday"}).status_code == 422
    assert httpx.get(f"{api.url}/data", params=day).status_code == 200
    time.sleep(0.3)

    access = [r for r in parsed(api, start) if r["logger"] == "uvicorn.access"]
    assert [(r["method"], r["path"], r["status"], r["level"]) for r in access] == [
        ("GET", "/data?start=yesterday", 422, "INFO")
    ]
    # The line is uvicorn's own, as if no proxy stood between.
    assert access[0]["message"].endswith('"GET /data?start=yesterday HTTP/1.1" 422')


def test_a_ten_day_backfill_at_info_logs_a_few_lines(fresh_dbs, metrics_api, worker_factory):
    api = metrics_api(LOG_LEVEL="INFO")
    worker = worker_factory(api.url, concurrency=2, LOG_LEVEL="INFO")
    api_from, worker_from = len(api.log()), len(worker.log())
    job_id = post_job(api.url, {"start_date": "2025-12-01", "end_date": "2025-12-10"})["id"]
    view = wait_for_job(job_id, timeout=120, procs=(api, worker))
    assert (view.status, view.slices_succeeded) == ("succeeded", 240)
    time.sleep(0.5)

    written = lines_after(api, api_from) + lines_after(worker, worker_from)
    print(f"a 10-day backfill (240 slices) at INFO: {len(written)} lines\n" + "\n".join(written))
    assert len(written) < 100
    assert sum(f"job {job_id} stored" in line for line in written) == 1
    assert sum(f"job {job_id} succeeded: 240 slices" in line for line in written) == 1
    assert not any("slice succeeded" in line or "received" in line for line in written)


def test_beat_logs_through_the_same_setup(system):
    beat = system.start_beat(LOG_FORMAT="json")
    time.sleep(2.5)  # a couple of reconcile sends, every second here
    log = beat.log()
    started = log.index("beat: Starting...")
    tail = log[log.rindex("\n", 0, started) + 1 :]
    records = [json.loads(line) for line in tail.splitlines() if line.strip()]
    assert records[0]["message"] == "beat: Starting..."
    assert any("etl-reconcile" in r["message"] for r in records[1:]), log


def test_the_cli_logs_each_slice_with_fields_when_verbose(dbs, api_server):
    done = subprocess.run(
        [sys.executable, "-m", "workers.etl", "--date", "2025-12-07", "-v"],
        cwd=REPO,
        env=process_env(API_BASE_URL=api_server.url, LOG_FORMAT="json"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines()]
    slices = [r for r in records if r["message"].startswith("slice succeeded")]
    assert len(slices) == 24 and all("job_id" in r and "slice" in r for r in slices)
    assert "24 slices, 24 succeeded, 0 failed" in done.stdout


def test_the_cli_says_its_version():
    from windfarm import __version__

    done = subprocess.run(
        [sys.executable, "-m", "workers.etl", "--version"],
        cwd=REPO,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"python -m workers.etl {__version__}")


def test_flower_does_not_warn_while_the_workers_it_inspects_start(system):
    """Flower as compose runs it: the app definition alone."""
    port = free_port()
    flower = system.add(
        start(
            "flower",
            [
                "-m",
                "celery",
                "-A",
                "windfarm.queue",
                "flower",
                f"--port={port}",
                "--address=127.0.0.1",
            ],
            process_env(),
        )
    )
    assert flower.wait_for_log("Visit me at"), flower.describe()
    time.sleep(3)  # its first inspection of the (absent) workers times out meanwhile
    assert "Inspect method" not in flower.log(), flower.describe()
