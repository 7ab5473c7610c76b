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

router = APIRouter(prefix="/jobs", tags=["jobs"])

# Job ids are PostgreSQL bigints; a larger number is no id at all.
MAX_JOB_ID = 2**63 - 1

# Every time in the target is naive UTC; say so, instead of promising the
# offset that OpenAPI's "date-time" format requires.
UtcDateTime = Annotated[
    dt.datetime,
    WithJsonSchema({
        "type": "string",
        "description": "UTC, ISO 8601 without an offset",
        "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?$",
        "examples": ["2025-12-05T03:00:00"],
    }),
]


class JobRequest(BaseModel):
    """One day (``date``) or an inclusive range (``start_date``..``end_date``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"date": "2025-12-05"},
                                        {"start_date": "2025-12-01", "end_date": "2025-12-10"}]},
    )

    date: IsoDate | None = None
    start_date: IsoDate | None = None
    end_date: IsoDate | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        if self.date is not None:
            if self.start_date is not None or self.end_date is not None:
                raise ValueError("give either date or start_date and end_date, not both")
            return self
        if self.start_date is None or self.end_date is None:
            raise ValueError("give date, or both start_date and end_date")
        if self.end_date < self.start_date:
            raise ValueError(f"end_date {self.end_date} is before start_date {self.start_date}")
        return self

    def days(self) -> tuple[dt.date, dt.date]:
        if self.date is not None:
            return self.date, self.date
        assert self.start_date is not None and self.end_date is not None
        return self.start_date, self.end_date


class SliceErrorOut(BaseModel):
    slice_start: UtcDateTime
    message: str


class JobOut(BaseModel):
    id: int
    status: str = Field(description="queued, running, succeeded or failed")
    origin: str = Field(description="api, cli, hourly or daily")
    start_date: dt.date
    end_date: dt.date
    slices_total: int
    slices_succeeded: int
    slices_failed: int
    slices_running: int
    slices_pending: int = Field(description="slices not yet ended: queued or running")
    rows_written: int
    created_at: UtcDateTime
    finished_at: UtcDateTime | None
    errors: list[SliceErrorOut]

    @classmethod
    def of(cls, view: jobs.JobView) -> JobOut:
        data = {**view.__dict__, "errors": [e.__dict__ for e in view.errors]}
        return cls.model_validate(data)


def _enqueue(job_id: int, starts: list[dt.datetime]) -> None:
    # Imported here: the Celery app is only needed once a job is posted.
    from workers.dispatch import enqueue_slices

    enqueue_slices(job_id, starts)


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    dependencies=[Authorized],
    # 400: a body that is not text at all; 413: larger than api.limits allows.
    responses=problem_responses(400, 401, 413, 422),
)
def post_job(
    request: JobRequest, conn: TargetConn, background: BackgroundTasks, response: Response
) -> JobOut:
    """Store a job for the given days and enqueue its hour slices."""
    first, last = request.days()
    max_days = get_settings().jobs_max_days
    if (last - first).days + 1 > max_days:
        raise HTTPException(
            422, f"{first} .. {last} is more than {max_days} days (JOBS_MAX_DAYS); split it"
        )
    job_id = jobs.create_job(conn, origin="api", start_date=first, end_date=last)
    assert job_id is not None
    view = jobs.get_job(conn, job_id)
    assert view is not None
    conn.commit()
    # The job is durable before the broker hears of it; sending happens after
    # the response, and the reconciler sends whatever this misses.
    background.add_task(_enqueue, job_id, jobs.job_slices(first, last))
    response.headers["Location"] = f"/jobs/{job_id}"
    return JobOut.of(view)


@router.get("/{job_id}", response_model=JobOut, responses=problem_responses(404, 422))
def get_job(job_id: Annotated[int, Path(ge=1, le=MAX_JOB_ID)], conn: TargetConn) -> JobOut:
    """One job with its progress and the errors of its failed slices."""
    view = jobs.get_job(conn, job_id)
    if view is None:
        raise HTTPException(404, f"there is no job {job_id}")
    return JobOut.of(view)


@router.get("", response_model=list[JobOut], responses=problem_responses(422))
def list_jobs(
    conn: TargetConn, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[JobOut]:
    """The newest jobs first."""
    return [JobOut.of(v) for v in jobs.list_jobs(conn, limit=limit)]
