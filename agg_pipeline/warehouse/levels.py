"""The SQL a level of the hierarchy implies: how a parent's key becomes this level's
bucket, and the partials merged into it. Derived from ``core.hierarchy`` only, so a new
level needs no SQL here."""

from __future__ import annotations

from datetime import timedelta

from agg_pipeline.core.hierarchy import Bucket, Level, parent_of


def interval_literal(step: timedelta) -> str:
    """PostgreSQL interval text of a fixed bucket length ('5 minutes', '1 hour')."""
    seconds = int(step.total_seconds())
    if seconds <= 0 or seconds != step.total_seconds():
        raise ValueError(f"a bucket step must be whole seconds above 0, not {step}")
    for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}" + ("s" if n != 1 else "")
    raise AssertionError("unreachable: every whole number of seconds divides by 1")


def bucket_sql(level: Level, column: str) -> str:
    """The expression putting a parent row's key ``column`` into ``level``'s bucket (bind
    parameters :origin for fixed buckets, :tz for local days)."""
    if level.bucket is Bucket.FIXED:
        if level.step is None:
            raise ValueError(f"level {level.key!r} has fixed buckets but no step")
        return f"date_bin('{interval_literal(level.step)}', {column}, :origin)"
    if level.bucket is Bucket.LOCAL_DAY:
        return f"({column} AT TIME ZONE :tz)::date"
    # WEEK / MONTH are built from a parent keyed by a local date (daily): truncate it.
    unit = {Bucket.WEEK: "week", Bucket.MONTH: "month"}[level.bucket]
    return f"date_trunc('{unit}', {column})::date"


def parts_sql(level: Level) -> str:
    """The partials of the parent, one row per (sensor, bucket of ``level``):
    (sensor_id, bucket, n, mean, mn, mx, m2, first_at, last_at) inside the chunk (:start /
    :end, or :start_date / :end_date when the parent's key is a local date)."""
    parent = parent_of(level)
    key = parent.bucket_column
    lo, hi = (":start_date", ":end_date") if parent.key_is_date else (":start", ":end")
    # Imported history (origin 'imported', migration 015) never feeds the level above:
    # only rows computed from raw are merged.
    computed = " AND origin = 'computed'" if parent.imported_history else ""
    return (
        f"SELECT sensor_id, {bucket_sql(level, key)} AS bucket, sample_count AS n, "
        f"{parent.mean_column} AS mean, min_value AS mn, max_value AS mx, m2, "
        "first_reading_at AS first_at, last_reading_at AS last_at "
        f"FROM {parent.table} WHERE {key} >= {lo} AND {key} < {hi}{computed}"
    )
