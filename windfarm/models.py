"""The target database: statistics (``signal``, ``data``) and job bookkeeping.

``etl_job`` is one request for work (a day, a range, the hourly or daily
schedule, a catch-up); ``etl_slice`` is one UTC hour of it, the unit a worker
processes. The database, not the broker, is the record of outstanding work: a
slice stays open (queued, running or waiting) until a worker commits its
result. A job's status lives on its row and is moved by its slices'
transitions (``windfarm/jobs.py``); nothing else writes it.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class SliceState(StrEnum):
    """Where a slice stands. ``queued``, ``running`` and ``waiting`` are open;
    ``succeeded`` and ``failed`` are ended, and an ended slice never changes."""

    QUEUED = "queued"  # stored; sent to the broker or about to be
    RUNNING = "running"  # claimed by a worker
    WAITING = "waiting"  # transient retries spent; the reconciler sends it again later
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class JobStatus(StrEnum):
    QUEUED = "queued"  # no slice claimed yet
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # every slice succeeded
    FAILED = "failed"  # every slice ended, at least one failed


class Origin(StrEnum):
    """Who asked for a job."""

    API = "api"  # POST /jobs
    CLI = "cli"  # python -m workers.etl
    HOURLY = "hourly"  # beat: the last complete hour
    DAILY = "daily"  # beat: yesterday, for late data
    CATCHUP = "catchup"  # beat: hours of the catch-up window that never ran


OPEN_STATES = (SliceState.QUEUED, SliceState.RUNNING, SliceState.WAITING)
ENDED_STATES = (SliceState.SUCCEEDED, SliceState.FAILED)
OPEN_JOB = (JobStatus.QUEUED, JobStatus.RUNNING)
ENDED_JOB = (JobStatus.SUCCEEDED, JobStatus.FAILED)


def sql_list(values) -> str:
    """``('a', 'b')`` for SQL text: the states are constants of this module."""
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


class Base(DeclarativeBase):
    pass


class Signal(Base):
    __tablename__ = "signal"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)


class Data(Base):
    __tablename__ = "data"

    timestamp: Mapped[datetime] = mapped_column(DateTime, primary_key=True)
    signal_id: Mapped[int] = mapped_column(ForeignKey("signal.id"), primary_key=True)
    value: Mapped[float] = mapped_column(Double, nullable=False)


class Job(Base):
    __tablename__ = "etl_job"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    origin: Mapped[str] = mapped_column(String(20), nullable=False)  # api, cli, hourly, ...
    # Scheduled work travels in the priority lane, ahead of any backfill.
    priority: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    allow_empty: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    dedupe_key: Mapped[str | None] = mapped_column(String(100), unique=True)
    start_date: Mapped[date] = mapped_column(Date, nullable=False)
    end_date: Mapped[date] = mapped_column(Date, nullable=False)
    first_hour: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    last_hour: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    slices_total: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False, server_default="queued")
    # Final counts, stored when the job ends; open jobs count their slices.
    slices_succeeded: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    slices_failed: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    rows_written: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    values_ignored: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    created_at: Mapped[datetime] = mapped_column(
        DateTime, nullable=False, server_default=text("(now() at time zone 'utc')")
    )
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        CheckConstraint(f"status IN {sql_list(JobStatus)}", name="etl_job_status"),
        Index("etl_job_open", "id", postgresql_where=text(f"status IN {sql_list(OPEN_JOB)}")),
        Index(
            "etl_job_finished",
            "finished_at",
            postgresql_where=text(f"status IN {sql_list(ENDED_JOB)}"),
        ),
    )


class Slice(Base):
    __tablename__ = "etl_slice"

    job_id: Mapped[int] = mapped_column(
        ForeignKey("etl_job.id", ondelete="CASCADE"), primary_key=True
    )
    slice_start: Mapped[datetime] = mapped_column(DateTime, primary_key=True)
    state: Mapped[str] = mapped_column(String(20), nullable=False, server_default="queued")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    # Claims that found the slice still running: the attempt before never
    # finished (its worker died). Bounded, so a slice that kills its worker
    # does not loop for ever.
    unfinished: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    # Times the slice spent its retries and waited; its next wait is longer.
    waits: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    rows_written: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    values_ignored: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)  # the last reason it did not succeed
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    retry_at: Mapped[datetime | None] = mapped_column(DateTime)  # when a waiting slice is due

    __table_args__ = (
        CheckConstraint(f"state IN {sql_list(SliceState)}", name="etl_slice_state"),
        # Open slices by job: settling a job, counting an open job, the reconciler.
        Index(
            "etl_slice_open",
            "job_id",
            "slice_start",
            postgresql_where=text(f"state IN {sql_list(OPEN_STATES)}"),
        ),
        # A job's failed slices, for its errors without reading all its slices.
        Index(
            "etl_slice_failed",
            "job_id",
            "slice_start",
            postgresql_where=text(f"state = '{SliceState.FAILED}'"),
        ),
        # Runs of an hour, and its newest success: partitions and catch-up.
        Index("etl_slice_hour", "slice_start", "job_id"),
        Index(
            "etl_slice_succeeded",
            "slice_start",
            "finished_at",
            postgresql_where=text(f"state = '{SliceState.SUCCEEDED}'"),
        ),
        # Recent claims: how far each lane's queue has been consumed.
        Index("etl_slice_started", "started_at"),
    )


def create_schema(engine: Engine) -> None:
    """Create the target tables if missing; safe to call from many processes at once."""
    with engine.begin() as conn:
        # create_all checks then creates; two processes starting together would
        # race, so they take turns on a transaction-scoped advisory lock.
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('windfarm-etl schema'))"))
        Base.metadata.create_all(conn)


def prepare_target(engine: Engine) -> None:
    """Create the target database if missing, then its tables."""
    from windfarm.db import ensure_database

    ensure_database(engine.url.render_as_string(hide_password=False))
    create_schema(engine)
