"""UTC helpers. Inside windfarm-etl every datetime is naive and means UTC."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

HOUR = timedelta(hours=1)


def to_utc(value: datetime) -> datetime:
    """Naive UTC for ``value``: naive input is taken as UTC, aware input converted."""
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def end_of_day(value: datetime) -> datetime:
    """The last representable instant of ``value``'s day."""
    return datetime.combine(value.date(), time.max)


def day_hours(day: date) -> list[datetime]:
    """The 24 slice starts of ``day``."""
    first = datetime.combine(day, time.min)
    return [first + i * HOUR for i in range(24)]


def days_between(start: date, end: date) -> list[date]:
    """Every day of ``[start, end]``."""
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def hour_floor(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
