"""The slice task. Thin: :func:`workers.run.run_slice` does the work; this
module decides when to retry and when to leave the slice waiting.

Every way out leaves the slice accounted for in the database:

- it ended (``succeeded``, or ``failed`` for a permanent cause: a 4xx, data
  that cannot be processed, a bug);
- a transient cause (API unreachable, 5xx, 429, timeouts, the target down)
  put it back ``queued`` and a retry message is on its way, with Celery's
  exponential backoff and full jitter;
- its retries are spent: it is ``waiting``, with its last reason, and the
  reconciler sends it again after a delay that grows with each wait, however
  long the cause lasts. Transient causes never fail a slice;
- the target itself is down, so nothing can be recorded: the slice stays
  ``running``, and the reconciler sends it again once the target answers
  (after ``ETL_SLICE_TIMEOUT_S`` without a sign of work).
"""

from __future__ import annotations

import logging
from contextlib import suppress

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import task_postrun, task_prerun
from celery.utils.time import get_exponential_backoff_interval

from windfarm import logs
from windfarm.config import get_settings
from windfarm.queue import MAX_RETRY_DELAY_S, SLICE_TASK, TASK_SOFT_TIME_LIMIT_S, app
from workers import metrics
from workers.errors import TargetUnavailable, TransientError, describe
from workers.run import leave_waiting, requeue, run_slice

log = logging.getLogger(__name__)

RETRY_BASE_S = 1


def retry_cap_s() -> int:
    """The longest retry countdown: ``ETL_RETRY_BACKOFF_MAX_S``, but never so long
    that a held retry could pass for a lost message (half ``ETL_SLICE_TIMEOUT_S``)
    or outlast the broker's visibility timeout."""
    settings = get_settings()
    return max(
        1,
        int(
            min(
                settings.etl_retry_backoff_max_s,
                settings.etl_slice_timeout_s / 2,
                MAX_RETRY_DELAY_S,
            )
        ),
    )


# throws: a target outage that outlasts the retries is expected, not a bug;
# Celery logs it in one line instead of a traceback.
@app.task(name=SLICE_TASK, bind=True, acks_late=True, max_retries=None, throws=(TargetUnavailable,))
def process_slice(self: Task, job_id: int, slice_start: str) -> int:
    """Process the slice ``slice_start`` (an ISO hour) of job ``job_id``; rows written."""
    try:
        with metrics.in_progress():
            outcome = run_slice(job_id, slice_start)
        metrics.outcome(outcome.state)
        return outcome.rows_written
    except (TransientError, SoftTimeLimitExceeded) as exc:
        reason = (
            f"took longer than {TASK_SOFT_TIME_LIMIT_S} s"
            if isinstance(exc, SoftTimeLimitExceeded)
            else describe(exc)
        )
        retries = self.request.retries
        if retries >= get_settings().etl_max_retries:
            # Waiting either way: recorded so, or left running for the reconciler.
            metrics.outcome("waiting")
            try:
                leave_waiting(job_id, slice_start, f"{reason} (after {retries + 1} attempts)")
            except TargetUnavailable:
                log.warning(
                    "%s after %d attempts, and the target cannot record it; left to the reconciler",
                    reason,
                    retries + 1,
                )
                raise
            return 0
        delay = get_exponential_backoff_interval(
            RETRY_BASE_S, retries, retry_cap_s(), full_jitter=True
        )
        log.warning("%s; retry %d in %d s", reason, retries + 1, delay)
        metrics.outcome("retried")
        # When the target is down the slice stays running there; the retry comes anyway.
        with suppress(TargetUnavailable):
            requeue(job_id, slice_start, reason)
        raise self.retry(countdown=delay) from exc


# The log context of a slice task spans Celery's own lines about it too
# (retry, failure), not only those of the task's body.
@task_prerun.connect
def _bind_slice(task: Task | None = None, args: tuple = (), **_: object) -> None:
    if task is not None and task.name == SLICE_TASK and len(args) == 2:
        logs.bind(job_id=args[0], slice=str(args[1]))


@task_postrun.connect
def _unbind_slice(task: Task | None = None, **_: object) -> None:
    if task is not None and task.name == SLICE_TASK:
        logs.clear()
