"""``/jobs``: enqueue ETL work and follow it."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Self

from fastapi import APIRouter, BackgroundTasks, HTTPException, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from api.deps import Authorized, TargetConn
from api.errors import problem_responses
from api.params import IsoDate
from windfarm import jobs
from windfarm.config import get_settings
from windfarm.dispatch import TooManyOpenSlices, submit_job
from windfarm.models import JobStatus, Origin

router = APIRouter(prefix="/jobs", tags=["jobs"])

# How long a client refused for too many open slices should wait.
RETRY_AFTER_S = 60

# Job ids are PostgreSQL bigints; a larger number is no id at all.
MAX_JOB_ID = 2**63 - 1

# Every time in the target is naive UTC; say so, instead of promising the
# offset that OpenAPI's "date-time" format requires.
UtcDateTime = Annotated[
    dt.datetime,
    WithJsonSchema(
        {
            "type": "string",
            "description": "UTC, ISO 8601 without an offset",
            "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?$",
            "examples": ["2025-12-05T03:00:00"],
        }
    ),
]


class JobRequest(BaseModel):
    """One day (``date``) or an inclusive range (``start_date``..``end_date``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"date": "2025-12-05"},
                {"start_date": "2025-12-01", "end_date": "2025-12-10"},
            ]
        },
    )

    date: IsoDate | None = None
    start_date: IsoDate | None = None
    end_date: IsoDate | None = None
    allow_empty: bool = Field(
        False,
        description="let a slice erase an hour's statistics when the source now has "
        "no rows at all for it (otherwise such a slice fails)",
    )
    force: bool = Field(
        False,
        description="make a new job even when an open job already covers these days "
        "(otherwise that job is returned, 200)",
    )

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        if self.date is not None:
            if self.start_date is not None or self.end_date is not None:
                raise ValueError("give either date or start_date and end_date, not both")
        elif self.start_date is None or self.end_date is None:
            raise ValueError("give date, or both start_date and end_date")
        first, last = self.days()
        jobs.check_days(first, last, max_days=get_settings().jobs_max_days)
        return self

    def days(self) -> tuple[dt.date, dt.date]:
        if self.date is not None:
            return self.date, self.date
        assert self.start_date is not None and self.end_date is not None
        return self.start_date, self.end_date


class SliceNoteOut(BaseModel):
    slice_start: UtcDateTime
    message: str


class WaitingOut(SliceNoteOut):
    retry_at: UtcDateTime | None = Field(description="when the reconciler sends it again")


class JobOut(BaseModel):
    id: int
    status: JobStatus = Field(description="queued, running, succeeded or failed")
    origin: Origin
    start_date: dt.date
    end_date: dt.date
    first_hour: UtcDateTime = Field(description="the first slice's hour")
    last_hour: UtcDateTime = Field(description="the last slice's hour")
    allow_empty: bool
    slices_total: int
    slices_succeeded: int
    slices_failed: int
    slices_running: int = Field(description="slices a worker is processing now")
    slices_waiting: int = Field(
        description="slices whose retries are spent on a transient cause; sent again later"
    )
    slices_pending: int = Field(description="slices not yet ended: queued, running or waiting")
    rows_written: int
    values_ignored: int = Field(description="non-finite source values treated as missing")
    created_at: UtcDateTime
    finished_at: UtcDateTime | None
    errors: list[SliceNoteOut] = Field(description="each failed slice with its reason")
    waiting: list[WaitingOut] = Field(description="each waiting slice with its last reason")

    @classmethod
    def of(cls, view: jobs.JobView) -> JobOut:
        data = {
            **view.__dict__,
            "errors": [e.__dict__ for e in view.errors],
            "waiting": [w.__dict__ for w in view.waiting],
        }
        return cls.model_validate(data)


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    dependencies=[Authorized],
    responses={
        200: {"model": JobOut, "description": "an open job already covers these days"},
        # 400: a body that is not text at all; 413: larger than api.limits allows.
        **problem_responses(400, 401, 413, 422, 429),
    },
)
def post_job(request: JobRequest, background: BackgroundTasks, response: Response) -> JobOut:
    """Store a job for the given days and enqueue its hour slices."""
    first, last = request.days()
    # The job is committed (and its connection given back) before the broker
    # hears of it; sending happens after the response, holding no connection,
    # and the reconciler sends whatever that misses.
    try:
        submitted = submit_job(
            origin=Origin.API,
            hours=jobs.job_slices(first, last),
            allow_empty=request.allow_empty,
            reuse_open=not request.force,
            max_open_slices=get_settings().etl_max_open_slices,
            defer=background.add_task,
        )
    except TooManyOpenSlices as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    assert submitted is not None  # no dedupe key: always stored or found
    if not submitted.created:
        response.status_code = 200
    response.headers["Location"] = f"/jobs/{submitted.job.id}"
    return JobOut.of(submitted.job)


@router.get("/{job_id}", response_model=JobOut, responses=problem_responses(404, 422))
def get_job(job_id: Annotated[int, Path(ge=1, le=MAX_JOB_ID)], conn: TargetConn) -> JobOut:
    """One job with its progress, the errors of its failed slices and its waiting ones."""
    view = jobs.get_job(conn, job_id)
    if view is None:
        raise HTTPException(404, f"there is no job {job_id}")
    return JobOut.of(view)


@router.get("", response_model=list[JobOut], responses=problem_responses(422))
def list_jobs(
    conn: TargetConn,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    status: Annotated[JobStatus | None, Query(description="only jobs of this status")] = None,
    origin: Annotated[Origin | None, Query(description="only jobs of this origin")] = None,
) -> list[JobOut]:
    """The newest jobs first."""
    views = jobs.list_jobs(
        conn, limit=limit, status=status and status.value, origin=origin and origin.value
    )
    return [JobOut.of(v) for v in views]
