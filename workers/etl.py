"""Run the ETL for days of data from the command line.

    python -m workers.etl --date 2025-12-05                 # in this process
    python -m workers.etl --start 2025-12-01 --end 2025-12-03
    python -m workers.etl --date 2025-12-05 --enqueue       # send to the workers
    python -m workers.etl --date 2025-12-05 --enqueue --wait

In-process runs use the same code as the workers, one slice (UTC hour) after
another, and retry a failing slice a couple of times at most. The exit status
is 0 when every slice succeeded.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date, datetime

from windfarm import jobs
from windfarm.config import get_settings
from windfarm.db import target_engine
from windfarm.models import create_schema
from workers.errors import TransientError, describe
from workers.run import SliceOutcome, give_up, run_slice

PROG = "python -m workers.etl"
# Pauses before the in-process retries of a slice: two quick ones, then stop.
RETRY_PAUSES_S = (0.5, 1.5)
POLL_S = 0.5
BAR_WIDTH = 30


class CliError(Exception):
    """A failure the CLI reports in one line before exiting non-zero."""


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date like 2025-12-05") from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--date", type=_day, help="the one day to process (UTC)")
    parser.add_argument("--start", type=_day, help="first day of an inclusive range")
    parser.add_argument("--end", type=_day, help="last day of that range")
    parser.add_argument("--enqueue", action="store_true", help="send the slices to the workers")
    parser.add_argument("--wait", action="store_true", help="with --enqueue: follow the job")
    parser.add_argument("--timeout", type=float, help="with --wait: stop waiting after N seconds")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every slice")
    args = parser.parse_args(argv)
    if args.date and (args.start or args.end):
        parser.error("give --date, or --start and --end, not both")
    if args.date:
        args.start = args.end = args.date
    if not (args.start and args.end):
        parser.error("give --date, or both --start and --end")
    if args.end < args.start:
        parser.error(f"--end {args.end} is before --start {args.start}")
    days = (args.end - args.start).days + 1
    if days > get_settings().jobs_max_days:
        parser.error(f"{days} days is more than JOBS_MAX_DAYS ({get_settings().jobs_max_days})")
    if args.wait and not args.enqueue:
        parser.error("--wait follows an enqueued job: add --enqueue")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The summary says what failed; the per-slice log is for --verbose.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="etl: %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        if args.enqueue:
            return enqueue(args.start, args.end, wait=args.wait, timeout=args.timeout)
        return run_days(args.start, args.end)
    except CliError as exc:
        print(f"etl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\netl: interrupted", file=sys.stderr)
        return 130


def create_cli_job(start: date, end: date) -> int:
    """Store a job with origin ``cli``; CliError when the target database is down."""
    try:
        create_schema(target_engine())
        with target_engine().begin() as conn:
            job_id = jobs.create_job(conn, origin="cli", start_date=start, end_date=end)
    except Exception as exc:  # noqa: BLE001 - reported in one line
        raise CliError(f"cannot use the target database: {describe(exc)}") from exc
    assert job_id is not None  # no dedupe key, so always created
    return job_id


def run_days(start: date, end: date, *, sleep: Callable[[float], None] = time.sleep) -> int:
    """Process ``[start, end]`` in this process; the exit status."""
    began = time.perf_counter()
    job_id = create_cli_job(start, end)
    hours = jobs.job_slices(start, end)
    outcomes: list[SliceOutcome] = []
    for i, hour in enumerate(hours):
        try:
            outcomes.append(run_with_retries(job_id, hour, sleep=sleep))
        except TransientError as exc:
            _abandon(job_id, hours[i:], describe(exc))
            raise CliError(f"stopped at slice {hour.isoformat()} (job {job_id}): {exc}") from exc
    failed = [o for o in outcomes if o.state == "failed"]
    rows = sum(o.rows_written for o in outcomes)
    print(f"etl: job {job_id}: {len(hours)} slices, {len(outcomes) - len(failed)} succeeded, "
          f"{len(failed)} failed, {rows} rows written in {time.perf_counter() - began:.1f} s")
    for hour, outcome in zip(hours, outcomes, strict=True):
        if outcome.state == "failed":
            print(f"etl: slice {hour.isoformat()} failed: {outcome.error}", file=sys.stderr)
    return 1 if failed else 0


def run_with_retries(
    job_id: int, hour: datetime, *, sleep: Callable[[float], None] = time.sleep, client=None
) -> SliceOutcome:
    """run_slice, retried after the pauses of RETRY_PAUSES_S on transient errors."""
    for pause in RETRY_PAUSES_S:
        try:
            return run_slice(job_id, hour, client=client)
        except TransientError:
            sleep(pause)
    return run_slice(job_id, hour, client=client)


def _abandon(job_id: int, hours: list[datetime], reason: str) -> None:
    """End the slices a stopped run will not process, so its job does not linger."""
    try:
        give_up(job_id, hours[0], reason)
        for hour in hours[1:]:
            give_up(job_id, hour, f"not run: the CLI stopped at {hours[0].isoformat()}")
    except TransientError:
        pass  # the target is down too; the reconciler will find them


def enqueue(start: date, end: date, *, wait: bool, timeout: float | None) -> int:
    """Send ``[start, end]`` to the workers; with ``wait``, follow the job to its end."""
    from workers.dispatch import enqueue_slices  # imports Celery only when needed

    job_id = create_cli_job(start, end)
    hours = jobs.job_slices(start, end)
    sent = enqueue_slices(job_id, hours)
    print(f"etl: job {job_id}: {sent} of {len(hours)} slices sent to queue "
          f"{get_settings().etl_queue}")
    if sent < len(hours):
        raise CliError(f"the broker did not take every slice of job {job_id}; the rest stay "
                       "queued in the database for the reconciler to send")
    return follow(job_id, timeout=timeout) if wait else 0


def follow(job_id: int, *, timeout: float | None = None, out=None) -> int:
    """Draw a progress bar until the job ends; 0 when it succeeded."""
    out = out or sys.stderr
    began = time.monotonic()
    while True:
        view = _job(job_id)
        out.write("\r" + progress_line(view, time.monotonic() - began))
        out.flush()
        if view.status in jobs.TERMINAL:
            out.write("\n")
            break
        if timeout is not None and time.monotonic() - began > timeout:
            out.write("\n")
            raise CliError(f"job {job_id} has not ended after {timeout:g} s; it goes on")
        time.sleep(POLL_S)
    for error in view.errors:
        print(f"etl: slice {error.slice_start.isoformat()} failed: {error.message}",
              file=sys.stderr)
    print(f"etl: job {job_id} {view.status}: {view.slices_succeeded} succeeded, "
          f"{view.slices_failed} failed, {view.rows_written} rows written")
    return 0 if view.status == "succeeded" else 1


def _job(job_id: int) -> jobs.JobView:
    try:
        with target_engine().connect() as conn:
            view = jobs.get_job(conn, job_id)
    except Exception as exc:  # noqa: BLE001 - reported in one line
        raise CliError(f"cannot read job {job_id}: {describe(exc)}") from exc
    if view is None:
        raise CliError(f"job {job_id} does not exist")
    return view


def progress_line(view: jobs.JobView, elapsed: float) -> str:
    """``[#####.....] 12/24 slices, 1 failed, 576 rows, 3.2 s`` for a job."""
    done = view.slices_succeeded + view.slices_failed
    filled = BAR_WIDTH * done // max(view.slices_total, 1)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    failed = f", {view.slices_failed} failed" if view.slices_failed else ""
    return (f"[{bar}] {done}/{view.slices_total} slices{failed}, "
            f"{view.rows_written} rows, {elapsed:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
