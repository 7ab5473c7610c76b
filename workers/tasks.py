"""The slice task. Thin: :func:`workers.run.run_slice` does the work; this
module decides when to retry and when to give up.

Every way out leaves the slice accounted for: succeeded or failed with its
reason in the database, or a retry message on the broker. A target database
that is still down when the retries run out does not fail the slice: the
outage says nothing about the slice, and nothing could be recorded anyway. The
slice stays open and the reconciler sends it again once the target answers
(after ``ETL_SLICE_TIMEOUT_S``), however long the outage lasted. The same
happens when recording a failure is impossible because the target went down.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from windfarm.config import get_settings
from workers.celery_app import MAX_RETRY_DELAY_S, TASK_SOFT_TIME_LIMIT_S, app
from workers.errors import TargetUnavailable, TransientError, describe
from workers.run import give_up, run_slice

log = logging.getLogger(__name__)

RETRY_BASE_S = 1.0


def retry_delay(retries: int, *, rand: Callable[[], float] = random.random) -> float:
    """Seconds before retry number ``retries + 1``: exponential backoff, full jitter.

    Uniform in ``[0, min(cap, base * 2**retries))``; the cap is
    ``ETL_RETRY_BACKOFF_MAX_S``, never above what the visibility timeout allows.
    """
    cap = min(get_settings().etl_retry_backoff_max_s, MAX_RETRY_DELAY_S)
    return rand() * min(cap, RETRY_BASE_S * 2 ** min(retries, 32))


# throws: a target outage that outlasts the retries is expected, not a bug;
# Celery logs it in one line instead of a traceback.
@app.task(name="workers.process_slice", bind=True, acks_late=True, max_retries=None,
          throws=(TargetUnavailable,))
def process_slice(self: Task, job_id: int, slice_start: str) -> int:
    """Process the slice ``slice_start`` (an ISO hour) of job ``job_id``; rows written."""
    try:
        return run_slice(job_id, slice_start).rows_written
    except (TransientError, SoftTimeLimitExceeded) as exc:
        reason = (
            f"took longer than {TASK_SOFT_TIME_LIMIT_S} s"
            if isinstance(exc, SoftTimeLimitExceeded) else describe(exc)
        )
        retries = self.request.retries
        if retries >= get_settings().etl_max_retries:
            if isinstance(exc, TargetUnavailable):
                log.warning("slice %s of job %s: %s after %d attempts; left to the reconciler",
                            slice_start, job_id, reason, retries + 1)
                raise
            give_up(job_id, slice_start, f"gave up after {retries + 1} attempts: {reason}")
            return 0
        delay = retry_delay(retries)
        log.warning("slice %s of job %s: %s; retry %d in %.1f s",
                    slice_start, job_id, reason, retries + 1, delay)
        raise self.retry(countdown=delay) from exc
