"""Settings, read once from the environment.

Every module asks :func:`get_settings` instead of reading ``os.environ``; tests
change the environment and call ``get_settings.cache_clear()``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from windfarm.vocabulary import VARIABLES


def _validate_cron(value: str) -> str:
    if len(value.split()) != 5:
        raise ValueError(
            f"{value!r} is not a 5-field crontab expression (minute hour dom month dow)"
        )
    return value


class Settings(BaseSettings):
    # A .env file in the working directory also counts; WINDFARM_ENV_FILE names
    # another, or none when empty (the tests run beside a developer's .env).
    model_config = SettingsConfigDict(
        env_file=os.environ.get("WINDFARM_ENV_FILE", ".env") or None,
        env_file_encoding="utf-8",
        extra="ignore",
    )

    source_database_url: str = "postgresql+psycopg2://postgres:postgres@localhost:5432/source_db"
    target_database_url: str = "postgresql+psycopg2://postgres:postgres@localhost:5432/target_db"
    api_base_url: str = "http://localhost:8000"
    celery_broker_url: str = "redis://localhost:6379/0"
    celery_result_backend: str | None = None
    etl_queue: str = "etl"

    api_token: str | None = None
    # Where the dashboard links to Flower; unset: port 5555 of the dashboard's host.
    flower_url: str | None = None

    data_max_days: int = Field(31, ge=1)
    jobs_max_days: int = Field(366, ge=1)
    etl_variables: Annotated[tuple[str, ...], NoDecode] = ("wind_speed", "power")

    etl_hourly_cron: str = "5 * * * *"
    etl_daily_cron: str = "0 2 * * *"
    etl_slice_timeout_s: float = Field(300, gt=0)
    etl_reconcile_every_s: float = Field(60, gt=0)
    etl_catchup_days: int = Field(7, ge=0)
    etl_job_retention_days: int = Field(90, ge=1)
    # The longest a waiting slice waits before the reconciler sends it again.
    etl_wait_max_s: float = Field(900, gt=0)
    # POST /jobs answers 429 while this many slices are open.
    etl_max_open_slices: int = Field(50_000, ge=1)

    # Where a worker node serves its Prometheus metrics (workers/metrics.py); 0: nowhere.
    etl_metrics_port: int = Field(9808, ge=0, le=65535)
    # One logging setup for every process (windfarm/logs.py).
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"

    etl_http_timeout_s: float = Field(10, gt=0)
    etl_max_retries: int = Field(8, ge=0)
    etl_retry_backoff_max_s: int = Field(60, ge=1)

    # The API's exposure (api/security.py, api/limits.py, api/serve.py).
    # Host names the API answers (comma-separated; a leading "*." allows
    # subdomains); unset: any. Include the name the workers use (API_BASE_URL)
    # and the one health checks use.
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    # Bytes of GET /data response bodies the API holds at once; beyond them it
    # answers 503 with Retry-After before querying. Large ranges may take at
    # most three quarters, so small reads (a worker's hour) still get through.
    api_data_budget_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    # A client that does not take a piece of its response for this long is dropped.
    api_send_timeout_s: float = Field(30, gt=0)
    # python -m api.serve: a connection whose request headers are not complete
    # this long after it opened, or after its next request began, is closed.
    api_header_timeout_s: float = Field(10, gt=0)
    # python -m api.serve: open connections at most; beyond them the oldest idle
    # or header-less one is closed, or else the new one is refused.
    api_max_connections: int = Field(1000, ge=1)
    # python -m api.serve: an idle keep-alive connection is closed after this long.
    api_keep_alive_s: int = Field(5, ge=1)

    @property
    def etl_priority_queue(self) -> str:
        """The lane of scheduled slices and control tasks, beside ``etl_queue``."""
        return f"{self.etl_queue}.priority"

    @field_validator("etl_variables", mode="before")
    @classmethod
    def _split_variables(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(h.strip().lower() for h in value.split(",") if h.strip())
        return value

    @field_validator("etl_variables")
    @classmethod
    def _known_variables(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [v for v in value if v not in VARIABLES]
        if unknown or not value:
            raise ValueError(f"ETL_VARIABLES must name some of {', '.join(VARIABLES)}; got {value}")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR; got {value!r}")
        return value.upper()

    @field_validator("etl_hourly_cron", "etl_daily_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return _validate_cron(value)

    @field_validator("api_token", "celery_result_backend", "flower_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _catchup_within_retention(self) -> Self:
        if self.etl_catchup_days > self.etl_job_retention_days:
            raise ValueError(
                f"ETL_CATCHUP_DAYS ({self.etl_catchup_days}) cannot exceed "
                f"ETL_JOB_RETENTION_DAYS ({self.etl_job_retention_days}): catch-up reads the "
                "bookkeeping of the hours it looks at"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
