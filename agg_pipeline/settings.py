"""Typed settings from the environment, validated once at load.

Every knob of agg_pipeline is an environment variable (prefix ``AGG_PIPELINE_``, plus the
conventional ``DATABASE_URL``). A bad value fails when the definitions load, with a message
that names the variable, never later in the middle of a write.
"""

from __future__ import annotations

import functools
import os
import re
from datetime import date
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError as _SourceError

ENV_PREFIX = "AGG_PIPELINE_"
PACKAGE_DIR = Path(__file__).resolve().parent


class SettingsError(ValueError):
    """A setting from the environment is invalid; the message names the variable."""


def project_root() -> Path | None:
    """The source checkout this package runs from (editable install), if any."""
    candidate = PACKAGE_DIR.parent
    return candidate if (candidate / "pyproject.toml").is_file() else None


def _default_home() -> Path:
    root = project_root()
    return (root / ".local") if root else Path.home() / ".agg_pipeline"


def normalize_database_url(url: str) -> str:
    """Name the psycopg2 driver: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg v3,
    which agg_pipeline does not ship."""
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
    if not url.startswith("postgresql+psycopg2://"):
        raise ValueError("expected a postgresql+psycopg2:// (or postgresql://) URL")
    return url


class Settings(BaseSettings):
    """All settings. Env var = ``AGG_PIPELINE_`` + upper-cased field name, unless aliased."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- where things live -------------------------------------------------------------
    database_url: str | None = Field(
        default=None,
        validation_alias="DATABASE_URL",
        repr=False,  # it may carry a password
        description="SQLAlchemy URL of the warehouse. Unset: the local embedded PostgreSQL.",
    )
    home: Path = Field(
        default_factory=_default_home,
        description="Local state: embedded PostgreSQL data, Dagster home for `make dev`.",
    )
    catalogue: str = Field(
        default="hydroponics",
        description="Series catalogue: a shipped name (hydroponics, water_quality, oil_well) "
        "or a path to a YAML file.",
    )

    # --- partitions --------------------------------------------------------------------
    start_date: date = Field(
        default=date(2025, 1, 1), description="First partition (any earlier data is ignored)."
    )
    timezone: str = Field(
        default="UTC",
        description="IANA zone of partition boundaries: days and weeks are local (23 h / 25 h "
        "on DST days).",
    )

    # --- data quality ------------------------------------------------------------------
    future_tolerance_seconds: float = Field(
        default=300.0,
        ge=0,
        description="Readings stamped further than this in the future (vs the database clock) "
        "are not used, and counted as `future`.",
    )
    max_gap_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Time-weighted conditions: a reading holds until the next one, at most this "
        "long.",
    )
    critical_margin_pct: float = Field(
        default=20.0,
        ge=0,
        description="A value is critical when it lies more than this percentage beyond an optimal "
        "bound (|bound| * pct / 100).",
    )

    # --- execution -----------------------------------------------------------------------
    work_mem: str = Field(
        default="256MB",
        description="PostgreSQL work_mem for the aggregation statements (SET LOCAL).",
    )
    median_max_readings: int = Field(
        default=100_000_000,
        ge=0,
        description="Exact medians hold a chunk's readings in memory (~16 bytes each); above "
        "this many readings in one chunk the median is skipped (NULL) and the run says so.",
    )
    parallelism: int = Field(
        default_factory=lambda: max(1, min(4, os.cpu_count() or 1)),
        ge=1,
        le=16,
        description="Connections that share each pass over raw readings, split by device "
        "(default: CPU cores, at most 4). 1 = one statement.",
    )
    chunk_days: int = Field(
        default=1,
        ge=1,
        le=31,
        description="A multi-partition run writes its window in chunks of this many days, one "
        "transaction each, so a long backfill never holds a table lock for long.",
    )
    lock_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="A write waiting this long for a lock (another run's advisory lock on a "
        "(table, day), or a table lock held by another session) stops waiting, logs what it "
        "waited for and who holds it, and tries again.",
    )
    lock_retries: int = Field(
        default=10,
        ge=0,
        le=1000,
        description="How many times a write waits again for a lock before the run fails, "
        "naming the lock (at most (retries + 1) x AGG_PIPELINE_LOCK_TIMEOUT_SECONDS of waiting).",
    )

    # --- automation: the old feature flags (each schedule / sensor on or off) ------------
    schedule_readings_1m: bool = Field(
        default=True, description="Refresh readings_1m for the open hour every minute."
    )
    schedule_readings_5m: bool = Field(
        default=True, description="Refresh readings_5m for the open hour every 5 minutes."
    )
    schedule_rollup_hourly: bool = Field(
        default=True, description="At :05, complete the previous hour (1m, 5m, hourly)."
    )
    schedule_rollup_daily: bool = Field(
        default=True, description="At 01:30, roll up the previous day (daily_at_0130)."
    )
    schedule_conditions_daily: bool = Field(
        default=True,
        description="At 01:30, the previous day's conditions (daily_at_0130).",
    )
    schedule_rollup_weekly: bool = Field(
        default=True, description="Monday 02:00, roll up the previous week."
    )
    schedule_retention: bool = Field(default=True, description="Daily 03:00 retention cleanup.")
    schedule_patterns: bool = Field(
        default=True, description="At 01:45, the previous day's pattern aggregates."
    )
    schedule_dashboard_refresh: bool = Field(
        default=True, description="Every 15 minutes, refresh the dashboard materialized views."
    )
    late_data_sensor: bool = Field(
        default=True, description="Observe late raw readings and let automation correct them."
    )
    late_data_lookback_days: float = Field(
        default=7.0,
        gt=0,
        description="Late readings for hours older than this are not corrected automatically "
        "(backfill them).",
    )
    late_data_settle_minutes: float = Field(
        default=10.0,
        ge=0,
        description="A reading is late when it arrives this long after its hour ended.",
    )
    coverage_warn_pct: float = Field(
        default=90.0,
        ge=0,
        le=100,
        description="Coverage checks warn below this share of expected readings.",
    )

    diagnostic_severities: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("info", "low", "medium", "high", "critical"),
        description="Known diagnostic severities (comma-separated in the env var); others "
        "are rejected and counted.",
    )

    # --- retention -------------------------------------------------------------------
    retention_raw_days: int = Field(
        default=90, ge=1, description="Raw readings older than this many days are deleted."
    )
    retention_downsample_days: int = Field(
        default=30, ge=1, description="1m and 5m windows older than this are deleted."
    )
    retention_hourly_days: int = Field(
        default=180, ge=1, description="Hourly rollups older than this are deleted."
    )
    retention_batch_rows: int = Field(
        default=50_000, ge=100, description="Rows deleted per statement (bounded batches)."
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("diagnostic_severities", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(v.strip().lower() for v in value.split(",") if v.strip())
        if not value:
            raise ValueError("at least one severity")
        return value

    @field_validator("work_mem")
    @classmethod
    def _memory_size(cls, value: str) -> str:
        if not re.fullmatch(r"\d+(kB|MB|GB)", value):
            raise ValueError(f"expected a PostgreSQL size such as 256MB, got {value!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _driver_named(cls, value: str | None) -> str | None:
        return normalize_database_url(value) if value else None

    @model_validator(mode="after")
    def _start_is_past(self) -> Settings:
        if self.start_date.year < 1970:
            raise ValueError("start_date must be 1970 or later")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def env_name(field: str) -> str:
    """The environment variable behind a settings field."""
    info = Settings.model_fields[field]
    return str(info.validation_alias) if info.validation_alias else ENV_PREFIX + field.upper()


def load_settings() -> Settings:
    """Build settings from the process environment; errors name the variable."""
    try:
        return Settings()
    except _SourceError as exc:
        raise SettingsError(f"invalid setting(s): {exc}") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            var = env_name(field) if field in Settings.model_fields else field
            problems.append(f"{var}: {err['msg']}")
        raise SettingsError("invalid setting(s): " + "; ".join(problems)) from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return load_settings()
