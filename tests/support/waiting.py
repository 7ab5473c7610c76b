"""The one way tests wait: read something again and again until a condition holds.

    until(read, done, timeout=30, what="...", procs=(worker,))  # fails on timeout
    held, last = poll(read, done, timeout=30)                  # says, never fails
    wait_for_job(job_id, timeout=60, procs=(api, worker))       # a job, until it ends

A job is read from the target database (a ``windfarm.jobs.JobView``) or, with
``api=``, as ``GET /jobs/{id}`` shows it (a dict); ``done`` takes what was read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

ENDED = ("succeeded", "failed")


def poll(
    read: Callable[[], T],
    done: Callable[[T], object] = bool,
    *,
    timeout: float,
    interval: float = 0.2,
    alive: Callable[[], bool] | None = None,
) -> tuple[bool, T]:
    """``read()`` every ``interval`` seconds until ``done(value)`` holds: ``(True, value)``.

    ``(False, last value)`` once ``timeout`` seconds have passed, or as soon as
    ``alive()`` (a process the value depends on) is false: what was read after
    it was seen false is the last word.
    """
    deadline = time.monotonic() + timeout
    while True:
        running = alive is None or alive()
        value = read()
        if done(value):
            return True, value
        if not running or time.monotonic() > deadline:
            return False, value
        time.sleep(interval)


def until(
    read: Callable[[], T],
    done: Callable[[T], object] = bool,
    *,
    what: str | Callable[[], str] = "the condition",
    procs: Iterable[Any] = (),
    **polling: Any,
) -> T:
    """As :func:`poll` (``polling``: its ``timeout``, ``interval``, ``alive``), but
    the value itself: fails (AssertionError) when the condition did not hold in
    time, naming ``what``, the last value read and the log tails of ``procs``
    (anything with ``describe()``)."""
    held, value = poll(read, done, **polling)
    if not held:
        alive = polling.get("alive")
        why = (
            "the process it waited on ended"
            if alive and not alive()
            else f"{polling['timeout']:g} s passed"
        )
        named = what() if callable(what) else what
        logs = "".join(f"\n{proc.describe()}" for proc in procs)
        raise AssertionError(f"waited in vain for {named} ({why}); last read: {value!r}{logs}")
    return value


def sample(read: Callable[[], T], *, seconds: float, interval: float = 1.0) -> list[T]:
    """``read()`` every ``interval`` seconds for ``seconds``: every value, in order."""
    began, values = time.monotonic(), []
    while time.monotonic() - began < seconds:
        values.append(read())
        time.sleep(interval)
    return values


def ended(job: Any) -> bool:
    """Whether a job (a ``JobView``, or a dict from ``GET /jobs/{id}``) has ended."""
    if job is None:
        return False
    status = job["status"] if isinstance(job, dict) else job.status
    return status in ENDED


def job_in_db(job_id: int):
    """The job as the target database holds it (``windfarm.jobs.get_job``); None if unknown."""
    from windfarm import jobs
    from windfarm.db import target_engine

    with target_engine().connect() as conn:
        return jobs.get_job(conn, job_id)


def wait_for_job(
    job_id: int,
    *,
    api: str | None = None,
    done: Callable[[Any], object] = ended,
    timeout: float = 60.0,
    interval: float = 0.2,
    what: str = "",
    procs: Iterable[Any] = (),
):
    """The job once ``done(job)`` holds (by default: once it has ended).

    Read from the target database (a ``JobView``), or with ``api`` (a base URL)
    from ``GET /jobs/{id}`` (a dict). On timeout, fail naming ``what`` (the job
    and what was awaited), with the job as last read and the log tails of ``procs``.
    """
    from tests.support.jobs import get_job

    def read():
        return job_in_db(job_id) if api is None else get_job(api, job_id)

    return until(
        read,
        lambda job: job is not None and done(job),
        timeout=timeout,
        interval=interval,
        what=what or f"job {job_id} to end",
        procs=procs,
    )
