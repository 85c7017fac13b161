"""The one registry of the hierarchy: raw -> 1m -> 5m / hourly -> daily -> weekly / monthly.

Every other place that needs a level's table, bucket column, grain, parent, chunking,
median, retention setting, watermark or InfluxDB measurement derives it from ``LEVELS``
here (writers, checks and consistency, status, retention by age and its raw-release
guard, the InfluxDB sink, healing, jobs, schedules and freshness checks). Adding a level
of an existing bucket kind and grain is one new entry below, its table's migration and
its asset in ``defs/readings/`` (ARCHITECTURE.md, "Where to add ... a level", says what
a new kind or grain takes).

Pure: no Dagster, no SQL execution, no settings read (setting *names* only).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import Enum, StrEnum


class Grain(StrEnum):
    """The partition grain of the asset that writes a level (and the healer's run group)."""

    HOURLY = "hourly"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


class Bucket(Enum):
    """How a level groups time: fixed-length windows, or local calendar days / weeks / months."""

    FIXED = "fixed"  # ``step`` long, aligned on the partition origin (a timestamptz key)
    LOCAL_DAY = "local_day"  # a local date in the configured zone
    WEEK = "week"  # the Monday (local date) of a Monday-to-Sunday week
    MONTH = "month"  # the 1st (local date) of a local calendar month


class Median(Enum):
    """Where a level's exact medians come from."""

    NONE = "none"  # no median column
    HOURLY_MEDIANS = "hourly_medians"  # bi.hourly_medians, written by the 1-minute pass
    DAILY_PASS = "daily_pass"  # the daily pass over raw (also yields the conditions)
    RAW = "raw"  # the raw readings of the bucket, read for this level alone

    @property
    def reads_raw(self) -> bool:
        """A write reads raw readings itself: a bucket with released raw keeps its row."""
        return self in (Median.DAILY_PASS, Median.RAW)


@dataclass(frozen=True)
class Level:
    key: str  # short name: "raw", "1m", "5m", "hourly", "daily", "weekly"
    asset: str  # the Dagster asset that writes it
    table: str
    bucket_column: str
    bucket: Bucket
    grain: Grain
    parent: str | None  # key of the level this one is computed from (None: the root)
    step: timedelta | None = None  # bucket length of a FIXED level
    mean_column: str = "avg_value"
    median: Median = Median.NONE
    median_table: str | None = None  # where the medians are kept, when not in ``table``
    # Chunks of a multi-partition run are whole multiples of this many local days.
    chunk_unit_days: int = 1
    closed_windows_only: bool = False  # a still-open window is never written
    imported_history: bool = False  # holds `origin = 'imported'` rows too (migration 015)
    with_conditions: bool = False  # carries the daily condition shares
    retention_setting: str | None = None  # Settings field of its age limit (None: forever)
    watermark: bool = False  # has a real-time view: its writes advance ops.watermarks
    sink_measurement: str | None = None  # suffix of its InfluxDB sink measurement
    schedule_setting: str | None = None  # Settings switch of its schedule (and first fill)
    # Settings flag that turns a RAW median off (None: always computed, within the limit).
    median_setting: str | None = None

    @property
    def key_is_date(self) -> bool:
        """The bucket column holds a local date (not a timestamptz)."""
        return self.bucket is not Bucket.FIXED


RAW = Level(
    key="raw",
    asset="raw_readings",
    # The default raw table; a catalogue may name another (catalogue.source.table).
    table="raw.readings",
    bucket_column="time",
    bucket=Bucket.FIXED,
    grain=Grain.HOURLY,
    parent=None,
    retention_setting="retention_raw_days",
)
LEVEL_1M = Level(
    key="1m",
    asset="readings_1m",
    table="bi.readings_1m",
    bucket_column="window_start",
    bucket=Bucket.FIXED,
    grain=Grain.HOURLY,
    parent="raw",
    step=timedelta(minutes=1),
    mean_column="mean_value",
    closed_windows_only=True,
    retention_setting="retention_downsample_days",
    watermark=True,
    sink_measurement="1m",
    schedule_setting="schedule_readings_1m",
)
LEVEL_5M = Level(
    key="5m",
    asset="readings_5m",
    table="bi.readings_5m",
    bucket_column="window_start",
    bucket=Bucket.FIXED,
    grain=Grain.HOURLY,
    parent="1m",
    step=timedelta(minutes=5),
    mean_column="mean_value",
    closed_windows_only=True,
    retention_setting="retention_downsample_days",
    sink_measurement="5m",
    schedule_setting="schedule_readings_5m",
)
LEVEL_HOURLY = Level(
    key="hourly",
    asset="rollup_hourly",
    table="bi.hourly_sensor_agg",
    bucket_column="hour_start",
    bucket=Bucket.FIXED,
    grain=Grain.HOURLY,
    parent="1m",
    step=timedelta(hours=1),
    median=Median.HOURLY_MEDIANS,
    median_table="bi.hourly_medians",
    imported_history=True,
    retention_setting="retention_hourly_days",
    watermark=True,
    schedule_setting="schedule_rollup_hourly",
)
LEVEL_DAILY = Level(
    key="daily",
    asset="rollup_daily",
    table="bi.daily_sensor_agg",
    bucket_column="metric_date",
    bucket=Bucket.LOCAL_DAY,
    grain=Grain.DAILY,
    parent="hourly",
    median=Median.DAILY_PASS,
    imported_history=True,
    with_conditions=True,
    watermark=True,
    schedule_setting="schedule_rollup_daily",
)
LEVEL_WEEKLY = Level(
    key="weekly",
    asset="rollup_weekly",
    table="bi.weekly_sensor_agg",
    bucket_column="week_start",
    bucket=Bucket.WEEK,
    grain=Grain.WEEKLY,
    parent="daily",
    median=Median.RAW,
    chunk_unit_days=7,  # weekly buckets must be whole (weeks start on Monday)
    imported_history=True,
    schedule_setting="schedule_rollup_weekly",
)
LEVEL_MONTHLY = Level(
    key="monthly",
    asset="rollup_monthly",
    table="bi.monthly_sensor_agg",
    bucket_column="month_start",
    bucket=Bucket.MONTH,
    grain=Grain.MONTHLY,
    parent="daily",
    median=Median.RAW,
    # Chunks stay whole days; a month is never split since a monthly partition is one
    # month and the chunks of a multi-month run are cut at month starts (windows.py).
    chunk_unit_days=1,
    schedule_setting="schedule_rollup_monthly",
    median_setting="monthly_median",
)

# Lowest level first: every level comes after its parent.
LEVELS: tuple[Level, ...] = (
    RAW,
    LEVEL_1M,
    LEVEL_5M,
    LEVEL_HOURLY,
    LEVEL_DAILY,
    LEVEL_WEEKLY,
    LEVEL_MONTHLY,
)
BY_KEY = {level.key: level for level in LEVELS}
BY_ASSET = {level.asset: level for level in LEVELS}
# The levels computed by an asset from the one below (all but the raw root).
DERIVED: tuple[Level, ...] = tuple(level for level in LEVELS if level.parent is not None)


def parent_of(level: Level) -> Level:
    if level.parent is None:
        raise ValueError(f"level {level.key!r} is the root: it has no parent")
    return BY_KEY[level.parent]


def upstream_assets(level: Level) -> tuple[str, ...]:
    """The assets whose changes make ``level`` stale: its parent and, for a level with
    medians (exact, from raw readings whichever way they are staged), the raw readings."""
    parent = parent_of(level)
    if level.median is Median.NONE or parent is RAW:
        return (parent.asset,)
    return (parent.asset, RAW.asset)


def holds_raw(level: Level) -> bool:
    """``level``'s rows were computed from the raw readings of their buckets: staged from
    raw (its parent is the root), or carrying a median read from raw however it is staged.
    Raw for a day may be released only when every such level holds the day (retention);
    whether a switched-off median (``median_setting``) still counts is the caller's to say.
    """
    return level.parent == RAW.key or level.median is not Median.NONE


def sink_levels() -> dict[str, Level]:
    """The levels the InfluxDB sink writes, by measurement suffix."""
    return {lv.sink_measurement: lv for lv in LEVELS if lv.sink_measurement}


def _validate(levels: tuple[Level, ...]) -> None:
    """Refuse a registry a writer could not follow (at import: a mistake in an entry fails
    the definitions load, not a run)."""
    keys = [lv.key for lv in levels]
    if len(set(keys)) != len(keys):
        raise ValueError(f"level keys must be unique: {keys}")
    for i, lv in enumerate(levels):
        if lv.parent is not None and lv.parent not in keys[:i]:
            raise ValueError(f"level {lv.key!r}: parent {lv.parent!r} must come before it")
        if lv.parent is not None and (lv.bucket is Bucket.FIXED) != (lv.step is not None):
            raise ValueError(f"level {lv.key!r}: a step exactly when its buckets are fixed")


_validate(LEVELS)
