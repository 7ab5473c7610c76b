"""The target database: statistics (``signal``, ``data``) and job bookkeeping.

``etl_job`` is one request for work (a day, a range, the hourly or daily
schedule); ``etl_slice`` is one UTC hour of it, the unit a worker processes.
The database, not the broker, is the record of outstanding work: a slice stays
``queued`` or ``running`` until a worker commits its result.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
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

SLICE_STATES = ("queued", "running", "succeeded", "failed")
JOB_STATES = SLICE_STATES


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
    origin: Mapped[str] = mapped_column(String(20), nullable=False)  # api, cli, hourly, daily
    dedupe_key: Mapped[str | None] = mapped_column(String(100), unique=True)
    start_date: Mapped[date] = mapped_column(Date, nullable=False)
    end_date: Mapped[date] = mapped_column(Date, nullable=False)
    slices_total: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False, server_default="queued")
    created_at: Mapped[datetime] = mapped_column(
        DateTime, nullable=False, server_default=text("(now() at time zone 'utc')")
    )
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        CheckConstraint(f"status IN {JOB_STATES}", name="etl_job_status"),
        Index("etl_job_created", "created_at"),
    )


class Slice(Base):
    __tablename__ = "etl_slice"

    job_id: Mapped[int] = mapped_column(
        ForeignKey("etl_job.id", ondelete="CASCADE"), primary_key=True
    )
    slice_start: Mapped[datetime] = mapped_column(DateTime, primary_key=True)
    state: Mapped[str] = mapped_column(String(20), nullable=False, server_default="queued")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    rows_written: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        CheckConstraint(f"state IN {SLICE_STATES}", name="etl_slice_state"),
        # The reconciler and the partition view look for unfinished slices and
        # for the latest run of an hour.
        Index("etl_slice_open", "state", postgresql_where=text("state IN ('queued', 'running')")),
        Index("etl_slice_hour", "slice_start", "finished_at"),
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
