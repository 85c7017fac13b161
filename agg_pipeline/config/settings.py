"""Typed settings from the environment, validated once at load.

Every knob of agg_pipeline is an environment variable (prefix ``AGG_PIPELINE_``, plus the
conventional ``DATABASE_URL``). A bad value fails when the definitions load, with a message
that names the variable, never later in the middle of a write.
"""

from __future__ import annotations

import functools
import os
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError as _SourceError

ENV_PREFIX = "AGG_PIPELINE_"
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # agg_pipeline/ (this is config/)

# Bounds of the numeric settings (also in each field's description and the README): finite,
# and far enough from the limits of timedelta and PostgreSQL that no value inside them can
# fail later, in the middle of a run.
EARLIEST_START = date(1970, 1, 1)
DAY_SECONDS = 86_400
MAX_RETENTION_DAYS = 36_500  # a century
WORK_MEM_KB = (64, 2_147_483_647)


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
    sql_dir: Path | None = Field(
        default=None,
        description="Folder of the numbered migration files `agg-pipeline migrate` applies. "
        "Unset: the ones shipped inside the package (agg_pipeline/warehouse/migrations/).",
    )
    events_catalogue: str = Field(
        default="analytics",
        description="Events catalogue (event rollups): a shipped name (analytics) or a path "
        "to a YAML file.",
    )
    catalogue: str = Field(
        default="hydroponics",
        description="Series catalogue: a shipped name (hydroponics, water_quality, oil_well) "
        "or a path to a YAML file.",
    )

    dev_feed: bool = Field(
        default=True,
        description="`agg-pipeline dev` (make dev) runs a live feed of simulated readings "
        "beside Dagster (`agg-pipeline feed`, every 10 s); false: none (also --no-feed).",
    )

    # --- partitions --------------------------------------------------------------------
    start_date: date = Field(
        default=date(2025, 1, 1),
        ge=EARLIEST_START,
        description="First partition (any earlier data is ignored): from 1970-01-01 to today "
        "(a later one would leave the daily and weekly assets without partitions).",
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
        le=DAY_SECONDS,
        allow_inf_nan=False,
        description="Readings stamped further than this in the future (vs the database clock) "
        "are not used, and counted as `future`. 0 to 86400 (one day).",
    )
    max_gap_seconds: float = Field(
        default=300.0,
        gt=0,
        le=DAY_SECONDS,
        allow_inf_nan=False,
        description="Time-weighted conditions: a reading holds until the next one, at most this "
        "long. Above 0, at most 86400 (one day: a reading never holds past its day anyway).",
    )
    critical_margin_pct: float = Field(
        default=20.0,
        ge=0,
        le=1000,
        allow_inf_nan=False,
        description="A value is critical when it lies more than this percentage beyond an optimal "
        "bound (|bound| * pct / 100). 0 to 1000.",
    )

    # --- execution -----------------------------------------------------------------------
    work_mem: str = Field(
        default="256MB",
        description="PostgreSQL work_mem for the aggregation statements (SET LOCAL): a size in "
        "kB, MB or GB within PostgreSQL's range, 64kB to 2147483647kB.",
    )
    median_max_readings: int = Field(
        default=100_000_000,
        ge=0,
        le=1_000_000_000,
        description="Exact medians hold a chunk's readings in memory (~16 bytes each); above "
        "this many readings in one chunk the median is skipped (NULL) and the run says so. "
        "0 (never) to 10^9 (~16 GB).",
    )
    monthly_median: bool = Field(
        default=True,
        description="rollup_monthly computes each month's exact median from raw (while raw is "
        "retained): it reads the month's raw readings once more, ~30x a day's, holding them in "
        "PostgreSQL's sort memory (work_mem, spilling to disk). Off: median_value is NULL "
        "(median_status 'skipped'); every other figure is merged from daily.",
    )
    parallelism: int = Field(
        default_factory=lambda: max(1, min(4, os.cpu_count() or 1)),
        ge=1,
        le=16,
        description="Connections that share each pass over raw readings, split by device "
        "(default: CPU cores, at most 4). 1 = one statement; at most 16.",
    )
    backfill_partitions_per_run: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description="0: a backfill is one run (BackfillPolicy.single_run, which `dagster asset "
        "materialize --partition-range` requires). N: a backfill launched by the daemon (UI, "
        "sensor) splits into runs of at most N partitions of each asset's own grain "
        "(BackfillPolicy.multi_run), which the run queue runs concurrently; per-day advisory "
        "locks keep two runs from rewriting the same rows. Read when the code location loads.",
    )
    plain_1m: bool = Field(
        default=False,
        description="On: the 1-minute pass takes plain hash aggregates over raw readings and "
        "proves each minute free of duplicate (device, field, time) rows; only the hours it "
        "cannot prove are re-read through the exact de-duplicating pass. Off (default: it "
        "measured no faster, README Performance): every hour takes the exact pass. The rows "
        "written are the same either way.",
    )
    hour_values: bool = Field(
        default=True,
        description="On (default): readings_1m keeps each sensor-hour's valid, de-duplicated "
        "readings (bi.hour_values, ~16 bytes a reading, deleted with their raw day by "
        "retention), and the daily, weekly and monthly levels take their exact medians and "
        "condition shares from there instead of reading raw again, whenever those hours are "
        "current (else they read raw). Off: nothing is kept; every level reads raw. The rows "
        "written are the same either way. PostgreSQL sources only.",
    )
    chunk_days: int = Field(
        default=1,
        ge=1,
        le=31,
        description="A multi-partition run writes its window in chunks of this many days, one "
        "transaction each, so a long backfill never holds a table lock for long. 1 to 31.",
    )
    lock_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        allow_inf_nan=False,
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
        "naming the lock (at most (retries + 1) x AGG_PIPELINE_LOCK_TIMEOUT_SECONDS of "
        "waiting; 0 to 1000).",
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
    schedule_rollup_monthly: bool = Field(
        default=True, description="On the 1st at 03:30, roll up the previous month."
    )
    schedule_retention: bool = Field(default=True, description="Daily 03:00 retention cleanup.")
    schedule_patterns: bool = Field(
        default=True, description="At 01:45, the previous day's pattern aggregates."
    )
    schedule_dashboard_refresh: bool = Field(
        default=True, description="Every 15 minutes, refresh the dashboard materialized views."
    )
    # Event metrics (the old Celery analytics): each grain's schedule. The old feature flags
    # HOURLY_ROLLUP_ENABLED ... MONTHLY_ROLLUP_ENABLED are read too (the first name wins).
    schedule_events_hourly: bool = Field(
        default=True,
        validation_alias=AliasChoices(
            ENV_PREFIX + "SCHEDULE_EVENTS_HOURLY", "HOURLY_ROLLUP_ENABLED"
        ),
        description="At :05, the previous hour's event rollups (old HOURLY_ROLLUP_ENABLED).",
    )
    schedule_events_daily: bool = Field(
        default=True,
        validation_alias=AliasChoices(ENV_PREFIX + "SCHEDULE_EVENTS_DAILY", "DAILY_ROLLUP_ENABLED"),
        description="At 01:00, the previous day's event rollups (old DAILY_ROLLUP_ENABLED).",
    )
    schedule_events_weekly: bool = Field(
        default=True,
        validation_alias=AliasChoices(
            ENV_PREFIX + "SCHEDULE_EVENTS_WEEKLY", "WEEKLY_ROLLUP_ENABLED"
        ),
        description="Monday 02:00, the previous week's event rollups (old WEEKLY_ROLLUP_ENABLED).",
    )
    schedule_events_monthly: bool = Field(
        default=True,
        validation_alias=AliasChoices(
            ENV_PREFIX + "SCHEDULE_EVENTS_MONTHLY", "MONTHLY_ROLLUP_ENABLED"
        ),
        description="On the 1st at 03:00, the previous month's event rollups "
        "(old MONTHLY_ROLLUP_ENABLED).",
    )
    schedule_analytics_views: bool = Field(
        default=True, description="Every 15 minutes, refresh the analytics.mv_* views."
    )
    late_data_sensor: bool = Field(
        default=True, description="Observe late raw readings and let automation correct them."
    )
    healing_interval_seconds: int = Field(
        default=30,
        ge=5,
        le=3600,
        description="How often self_healing_sensor ticks (seconds). Lower heals sooner at the "
        "cost of more ticks (each ~0.15 s of queries). 5 to 3600.",
    )
    late_data_lookback_days: float = Field(
        default=7.0,
        gt=0,
        le=366,
        allow_inf_nan=False,
        description="Late readings for hours older than this are not corrected automatically "
        "(backfill them). Above 0, at most 366.",
    )
    late_data_settle_minutes: float = Field(
        default=10.0,
        ge=0,
        le=1440,
        allow_inf_nan=False,
        description="A reading is late when it arrives this long after its hour ended. 0 to "
        "1440 (one day).",
    )
    consistency_scan_minutes: float = Field(
        default=15.0,
        ge=0,
        le=1440,
        allow_inf_nan=False,
        description="Every this many minutes, self_healing_sensor compares every rollup "
        "level in the lookback with its parents as they are now and recomputes partitions "
        "that disagree (0 = every tick; 0 to 1440).",
    )
    coverage_warn_pct: float = Field(
        default=90.0,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="Coverage checks warn below this share of expected readings (0 to 100).",
    )

    diagnostic_severities: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("info", "low", "medium", "high", "critical"),
        description="Known diagnostic severities (comma-separated in the env var); others "
        "are rejected and counted.",
    )

    # --- the HTTP API (agg-pipeline serve) ------------------------------------------------
    api_key: SecretStr | None = Field(
        default=None,
        repr=False,  # a secret: never shown, logged or put in metadata
        exclude=True,
        description="The X-API-Key that POST /api/etl/run requires (compared in constant "
        "time). Unset: the endpoint answers 503 (disabled). The API reads it from the "
        "environment on every request, so a rotated key applies without a restart.",
    )

    # --- retention -------------------------------------------------------------------
    retention_raw_days: int = Field(
        default=90,
        ge=1,
        le=MAX_RETENTION_DAYS,
        description="Raw readings older than this many days are deleted (1 to 36500).",
    )
    retention_downsample_days: int = Field(
        default=30,
        ge=1,
        le=MAX_RETENTION_DAYS,
        description="1m and 5m windows older than this are deleted (1 to 36500).",
    )
    retention_hourly_days: int = Field(
        default=180,
        ge=1,
        le=MAX_RETENTION_DAYS,
        description="Hourly rollups older than this are deleted (1 to 36500).",
    )
    retention_device_metrics_days: int = Field(
        default=180,
        ge=0,
        le=MAX_RETENTION_DAYS,
        description="Device metrics (bi.device_metrics_hourly) older than this are deleted "
        "(0 = kept forever; 0 to 36500).",
    )
    retention_diagnostic_summary_days: int = Field(
        default=0,
        ge=0,
        le=MAX_RETENTION_DAYS,
        description="Diagnostic summaries (bi.diagnostic_summary_daily) older than this are "
        "deleted (0 = kept forever, like the daily rollups; 0 to 36500).",
    )
    retention_patterns_days: int = Field(
        default=90,
        ge=0,
        le=MAX_RETENTION_DAYS,
        description="Pattern aggregates (bi.pattern_*_daily) older than this are deleted, "
        "as the old pattern_aggregates_daily bucket did (0 = kept forever; 0 to 36500).",
    )
    retention_events_days: int = Field(
        default=90,
        ge=1,
        le=MAX_RETENTION_DAYS,
        description="Raw events (raw.events) older than this are deleted, once the pattern "
        "assets have run for their day (1 to 36500).",
    )
    retention_analytics_raw_days: int = Field(
        default=90,
        ge=1,
        le=MAX_RETENTION_DAYS,
        description="Raw events of the event rollups (raw.executions, raw.user_activity, "
        "raw.credit_usage) older than this are deleted, once every rollup level over them "
        "has run for their day (1 to 36500).",
    )
    retention_analytics_hourly_days: int = Field(
        default=180,
        ge=0,
        le=MAX_RETENTION_DAYS,
        description="Hourly event rollups (analytics.*_hourly) older than this are deleted "
        "(0 = kept forever; 0 to 36500). Daily and coarser are kept forever.",
    )
    retention_raw_diagnostics_days: int = Field(
        default=90,
        ge=1,
        le=MAX_RETENTION_DAYS,
        description="Raw diagnostics (raw.diagnostics) older than this are deleted, once "
        "diagnostic_summary_daily has run for their day (1 to 36500).",
    )
    retention_staging_hours: int = Field(
        default=24,
        ge=1,
        le=8_760,
        description="Staging rows (ops.staging_*) left by a killed run are deleted after "
        "this many hours (1 to 8760).",
    )
    retention_batch_rows: int = Field(
        default=50_000,
        ge=100,
        le=10_000_000,
        description="About this many rows deleted per statement (bounded batches, by key "
        "range): 100 to 10^7.",
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
        match = re.fullmatch(r"(\d{1,12})(kB|MB|GB)", value)
        if not match:
            raise ValueError(f"expected a PostgreSQL size such as 256MB, got {value!r}")
        kb = int(match[1]) * {"kB": 1, "MB": 1024, "GB": 1024 * 1024}[match[2]]
        # PostgreSQL's own bounds: outside them every aggregation statement would fail.
        if not WORK_MEM_KB[0] <= kb <= WORK_MEM_KB[1]:
            raise ValueError(f"{value} is outside PostgreSQL's range 64kB .. 2147483647kB")
        return value

    @field_validator("database_url")
    @classmethod
    def _driver_named(cls, value: str | None) -> str | None:
        return normalize_database_url(value) if value else None

    @field_validator("start_date")
    @classmethod
    def _start_is_past(cls, value: date) -> date:
        # A field validator, not a model validator: its error carries the field, so the
        # message names AGG_PIPELINE_START_DATE. Today in UTC+14, the earliest zone: a
        # start date no zone has reached yet is in the future everywhere.
        latest = datetime.now(UTC).date() + timedelta(days=1)
        if value > latest:
            raise ValueError(f"{value} is in the future (no partition would exist yet)")
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def env_name(field: str) -> str:
    """The environment variable behind a settings field."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])  # the current name; the others are old flag names
    return str(alias) if alias else ENV_PREFIX + field.upper()


def load_settings() -> Settings:
    """Build settings from the process environment; errors name the variable."""
    try:
        return Settings()
    except _SourceError as exc:
        raise SettingsError(f"invalid setting(s): {exc}") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if not err["loc"]:
                # A model-level rule spans several settings: its message names them.
                problems.append(err["msg"])
                continue
            field = str(err["loc"][0])
            info = Settings.model_fields.get(field)
            var = env_name(field) if info else field
            # The value given, unless the field hides it (a URL may carry a password).
            shown = f" (got {err['input']!r})" if info and info.repr and "input" in err else ""
            problems.append(f"{var}: {err['msg']}{shown}")
        raise SettingsError("invalid setting(s): " + "; ".join(problems)) from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return load_settings()
