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

from windfarm import __version__, jobs
from windfarm.config import get_settings
from windfarm.db import target_engine
from windfarm.logs import setup_logging
from windfarm.models import Origin, create_schema
from workers.errors import TransientError, describe
from workers.run import SliceOutcome, leave_waiting, run_slice

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
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="let a slice erase an hour's statistics when the source has no rows for it",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every slice")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    if args.date and (args.start or args.end):
        parser.error("give --date, or --start and --end, not both")
    if args.date:
        args.start = args.end = args.date
    if not (args.start and args.end):
        parser.error("give --date, or both --start and --end")
    try:
        jobs.check_days(args.start, args.end, max_days=get_settings().jobs_max_days)
    except jobs.RangeError as exc:
        parser.error(str(exc).replace("end_date", "--end").replace("start_date", "--start"))
    if args.wait and not args.enqueue:
        parser.error("--wait follows an enqueued job: add --enqueue")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The summary says what failed; the per-slice log is for --verbose. LOG_FORMAT applies.
    setup_logging(level=logging.DEBUG if args.verbose else logging.ERROR)
    began = time.monotonic()
    try:
        if args.enqueue:
            return enqueue(
                args.start,
                args.end,
                wait=args.wait,
                timeout=args.timeout,
                allow_empty=args.allow_empty,
                began=began,
            )
        return run_days(args.start, args.end, allow_empty=args.allow_empty)
    except CliError as exc:
        print(f"etl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\netl: interrupted", file=sys.stderr)
        return 130


def submit(start: date, end: date, *, allow_empty: bool, enqueue: bool) -> tuple[int, int]:
    """Store a job with origin ``cli`` and, with ``enqueue``, send its slices;
    the job id and how many slices the broker took. CliError when the target
    database is down."""
    sent: list[int] = []

    def send_now(send, *args, **kwargs) -> None:
        sent.append(send(*args, **kwargs) if enqueue else 0)

    try:
        from windfarm.dispatch import submit_job  # loads Celery: only once it is needed

        create_schema(target_engine())
        submitted = submit_job(
            origin=Origin.CLI,
            hours=jobs.job_slices(start, end),
            allow_empty=allow_empty,
            defer=send_now,
        )
    except Exception as exc:
        raise CliError(f"cannot use the target database: {describe(exc)}") from exc
    assert submitted is not None  # no dedupe key, so always stored
    return submitted.job.id, sent[0]


def run_days(
    start: date,
    end: date,
    *,
    allow_empty: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Process ``[start, end]`` in this process; the exit status."""
    began = time.perf_counter()
    job_id, _ = submit(start, end, allow_empty=allow_empty, enqueue=False)
    hours = jobs.job_slices(start, end)
    outcomes: list[SliceOutcome] = []
    for i, hour in enumerate(hours):
        try:
            outcomes.append(run_with_retries(job_id, hour, sleep=sleep))
        except TransientError as exc:
            _hand_over(job_id, hours[i:], describe(exc))
            raise CliError(
                f"stopped at slice {hour.isoformat()} (job {job_id}): {exc}; the "
                "job's other slices stay open, for workers to take over"
            ) from exc
    failed = [o for o in outcomes if o.state == "failed"]
    rows = sum(o.rows_written for o in outcomes)
    print(
        f"etl: job {job_id}: {len(hours)} slices, {len(outcomes) - len(failed)} succeeded, "
        f"{len(failed)} failed, {rows} rows written in {time.perf_counter() - began:.1f} s"
    )
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


def _hand_over(job_id: int, hours: list[datetime], reason: str) -> None:
    """Leave the slices a stopped run will not process to the workers: the one
    that failed waits with its reason, the rest are unsent, for the reconciler."""
    try:
        leave_waiting(job_id, hours[0], reason)
        with target_engine().begin() as conn:
            jobs.mark_unsent(conn, job_id, hours[1:])
    except Exception:  # noqa: BLE001 - the target is down too; the reconciler finds them
        pass


def enqueue(
    start: date,
    end: date,
    *,
    wait: bool,
    timeout: float | None,
    allow_empty: bool = False,
    began: float | None = None,
) -> int:
    """Send ``[start, end]`` to the workers; with ``wait``, follow the job to its end."""
    job_id, sent = submit(start, end, allow_empty=allow_empty, enqueue=True)
    total = len(jobs.job_slices(start, end))
    print(f"etl: job {job_id}: {sent} of {total} slices sent to queue {get_settings().etl_queue}")
    if sent < total:
        raise CliError(
            f"the broker did not take every slice of job {job_id}; the rest stay "
            "queued in the database for the reconciler to send"
        )
    return follow(job_id, timeout=timeout, began=began) if wait else 0


def follow(
    job_id: int, *, timeout: float | None = None, out=None, began: float | None = None
) -> int:
    """Show the job's progress until it ends; 0 when it succeeded. On a terminal
    the bar redraws in place; otherwise only the final line is written."""
    out = out or sys.stderr
    began = time.monotonic() if began is None else began
    live = out.isatty()
    while True:
        view = _job(job_id)
        if live:
            out.write("\r" + progress_line(view, time.monotonic() - began))
            out.flush()
        if view.ended:
            break
        if timeout is not None and time.monotonic() - began > timeout:
            out.write(("\n" if live else "") + progress_line(view, time.monotonic() - began) + "\n")
            raise CliError(f"job {job_id} has not ended after {timeout:g} s; it goes on")
        time.sleep(POLL_S)
    out.write("\n" if live else progress_line(view, time.monotonic() - began) + "\n")
    out.flush()
    for error in view.errors:
        print(
            f"etl: slice {error.slice_start.isoformat()} failed: {error.message}", file=sys.stderr
        )
    print(
        f"etl: job {job_id} {view.status}: {view.slices_succeeded} succeeded, "
        f"{view.slices_failed} failed, {view.rows_written} rows written"
    )
    return 0 if view.status == "succeeded" else 1


def _job(job_id: int) -> jobs.JobView:
    try:
        with target_engine().connect() as conn:
            view = jobs.get_job(conn, job_id)
    except Exception as exc:
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
    waiting = f", {view.slices_waiting} waiting" if view.slices_waiting else ""
    return (
        f"[{bar}] {done}/{view.slices_total} slices{failed}{waiting}, "
        f"{view.rows_written} rows, {elapsed:.1f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
