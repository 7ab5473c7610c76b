"""A job over HTTP (posted, as ``GET /jobs/{id}`` shows it) and its slices' rows
in the target database. Waiting for a job is :func:`tests.support.waiting.wait_for_job`."""

from __future__ import annotations

from collections import namedtuple
from datetime import datetime

import httpx


def post_job(api_url: str, body: dict, **headers: str) -> dict:
    """``POST /jobs`` with ``body``; the job it answers (202 required)."""
    response = httpx.post(f"{api_url}/jobs", json=body, headers=headers, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()


def get_job(api_url: str, job_id: int) -> dict:
    """The job as ``GET /jobs/{id}`` shows it (200 required)."""
    response = httpx.get(f"{api_url}/jobs/{job_id}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def slice_rows(job_id: int, *columns: str, hour: datetime | None = None) -> dict:
    """slice start -> row of ``columns`` (default: state, attempts) of a job's
    slices, in order of their hour, read from the current target; only the
    slice of ``hour`` where given. A row is a named tuple (``row.state``) and
    equals the plain tuple of its values. ``columns`` are SQL expressions on
    ``etl_slice`` (``"enqueued_at IS NOT NULL"``)."""
    from sqlalchemy import text

    from windfarm.db import target_engine

    selected = ", ".join(columns or ("state", "attempts"))
    where, params = "job_id = :j", {"j": job_id}
    if hour is not None:
        where, params = f"{where} AND slice_start = :h", {**params, "h": hour}
    with target_engine().connect() as conn:
        result = conn.execute(
            text(f"SELECT slice_start, {selected} FROM etl_slice WHERE {where} ORDER BY 1"), params
        )
        row_type = namedtuple("SliceRow", list(result.keys())[1:], rename=True)
        return {start: row_type(*values) for start, *values in result.all()}


def slice_row(job_id: int, hour: datetime, *columns: str):
    """The row of ``columns`` (default: state, attempts) of one slice of a job."""
    return slice_rows(job_id, *columns, hour=hour)[hour]
