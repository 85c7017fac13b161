"""The data-quality checks' SQL, per level of ``core/hierarchy.py`` (the Dagster check
results around them: ``defs/readings/checks.py``). Every query reads the window a run
just wrote: :lo / :hi in the level's keys, :start / :end the window's instants."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa

from agg_pipeline.core import hierarchy
from agg_pipeline.core.hierarchy import Level
from agg_pipeline.warehouse import levels
from agg_pipeline.warehouse.statements import CLOSED_WINDOW_START, quote_ident

# Means are merged in floating point: allow a relative hair around min and max.
EPS = "1e-9 * greatest(abs(min_value), abs(max_value), 1e-300)"


def invalid_buckets(
    conn: sa.Connection, level: Level, params: dict
) -> tuple[list[tuple[str, int]], int]:
    """Buckets (at most 20) with a row breaking min <= mean <= max, count > 0, spread
    >= 0, median in [min, max]; and the rows checked."""
    t, k, mean = quote_ident(level.table), quote_ident(level.bucket_column), level.mean_column
    spread = (
        "m2 >= 0"
        if mean == "mean_value"  # the downsamples: no stddev or median columns
        else (
            "m2 >= 0 AND (stddev_value >= 0 OR (stddev_value IS NULL AND sample_count = 1)) "
            f"AND (median_value IS NULL OR (median_value >= min_value - {EPS} "
            f"AND median_value <= max_value + {EPS}))"
        )
    )
    # One scan counts the rows and finds the bad ones. (A separate count(*) after a large
    # write took the window index, unvacuumed, and fetched every heap row at random:
    # 6.7-8.4 s for a fleet day of 2.8 M 5-minute rows, against ~1.6 s for this scan.)
    per_bucket = conn.execute(
        sa.text(
            f"SELECT {k}::text AS bucket, count(*) AS rows, count(*) FILTER (WHERE NOT ("
            f"sample_count > 0 AND min_value <= {mean} + {EPS} "
            f"AND {mean} <= max_value + {EPS} AND {spread})) AS bad FROM {t} "
            f"WHERE {k} >= :lo AND {k} < :hi GROUP BY 1"
        ),
        params,
    ).all()
    # One row per (sensor_id, key): every table's primary key guarantees it, so it is
    # asserted once (tests), not re-counted with a sort over the window on every run.
    total = sum(int(r.rows) for r in per_bucket)
    bad = sorted((r.bucket, int(r.bad)) for r in per_bucket if r.bad)[:20]
    return bad, total


def mismatches_below(
    conn: sa.Connection, level: Level, params: dict
) -> list[tuple[str, bool, int]]:
    """(bucket, its source rows no longer retained, series) where ``level``'s counts,
    minima or maxima differ from the level it was merged from."""
    parent = hierarchy.parent_of(level)
    below, below_key = quote_ident(parent.table), quote_ident(parent.bucket_column)
    t, k = quote_ident(level.table), quote_ident(level.bucket_column)
    bucket = levels.bucket_sql(level, f"b.{below_key}")
    below_range = (
        f"b.{below_key} >= :start_date AND b.{below_key} < :end_date"
        if parent.key_is_date
        else f"b.{below_key} >= :start AND b.{below_key} < :end"
    )
    params = {**params, "start_date": params["lo"], "end_date": params["hi"]}
    # Imported history (origin 'imported', migration 015) has no level below to match.
    computed = " AND origin = 'computed'" if level.imported_history else ""
    below_computed = " AND b.origin = 'computed'" if parent.imported_history else ""
    rows = conn.execute(
        sa.text(
            f"WITH below AS (SELECT b.sensor_id, {bucket} AS bucket, sum(b.sample_count) AS n, "
            f"min(b.min_value) AS mn, max(b.max_value) AS mx FROM {below} AS b "
            f"WHERE {below_range}{below_computed} GROUP BY 1, 2), "
            f"here AS (SELECT sensor_id, {k} AS bucket, sample_count AS n, min_value AS mn, "
            f"max_value AS mx FROM {t} WHERE {k} >= :lo AND {k} < :hi{computed}) "
            "SELECT coalesce(h.bucket, b.bucket)::text AS bucket, b.bucket IS NULL AS gone, "
            "count(*) AS series FROM here AS h "
            "FULL JOIN below AS b USING (sensor_id, bucket) "
            "WHERE h.n IS DISTINCT FROM b.n OR h.mn IS DISTINCT FROM b.mn "
            "OR h.mx IS DISTINCT FROM b.mx GROUP BY 1, 2 ORDER BY 1"
        ),
        params,
    ).all()
    return [(b, bool(gone), int(n)) for b, gone, n in rows]


def coverage_counts(
    conn: sa.Connection, table: str, key: str, start: datetime, end: datetime
) -> tuple[int, int]:
    """(valid readings in ``table`` over [start, end), sensors active in the day before
    ``end``)."""
    t, k = quote_ident(table), quote_ident(key)
    present, sensors = conn.execute(
        sa.text(
            f"SELECT (SELECT coalesce(sum(sample_count), 0) FROM {t} "
            f"WHERE {k} >= :s AND {k} < :e), "
            "(SELECT count(DISTINCT sensor_id) FROM bi.readings_1m "
            "WHERE window_start >= :e - interval '1 day' AND window_start < :e)"
        ),
        {"s": start, "e": end},
    ).one()
    return int(present), int(sensors)


def closed_window_start(conn: sa.Connection, step: timedelta, origin: datetime) -> datetime:
    """The start of the ``step`` window open now (the database's clock)."""
    return conn.execute(
        sa.text(CLOSED_WINDOW_START), {"step": levels.interval_literal(step), "o": origin}
    ).scalar_one()


def invalid_condition_days(conn: sa.Connection, lo: date, hi: date) -> list[tuple[str, int]]:
    """(day, sensors) whose conditions row has shares outside 0-100, optimal + critical
    above 100, or its bands out of order."""
    rows = conn.execute(
        sa.text(
            "SELECT metric_date::text, count(*) FROM bi.daily_sensor_conditions "
            "WHERE metric_date >= :lo AND metric_date < :hi AND NOT ("
            "reading_count > 0 AND optimal_pct_by_count BETWEEN 0 AND 100 "
            "AND critical_pct_by_count BETWEEN 0 AND 100 "
            "AND optimal_pct_by_count + critical_pct_by_count <= 100 + 1e-9 "
            "AND coalesce(time_in_optimal_pct, 0) BETWEEN 0 AND 100 + 1e-9 "
            "AND coalesce(time_in_critical_pct, 0) BETWEEN 0 AND 100 + 1e-9 "
            "AND coalesce(time_in_optimal_pct + time_in_critical_pct, 0) <= 100 + 1e-9 "
            "AND critical_below <= optimal_min AND optimal_max <= critical_above) "
            "GROUP BY 1 ORDER BY 1"
        ),
        {"lo": lo, "hi": hi},
    ).all()
    return [(d, int(n)) for d, n in rows]


def condition_coverage(conn: sa.Connection, lo: date, hi: date) -> list[tuple[str, Decimal]]:
    """(day, mean coverage % of its conditions rows, 2 decimals)."""
    rows = conn.execute(
        sa.text(
            "SELECT metric_date::text, round(avg(coverage_pct)::numeric, 2) AS pct "
            "FROM bi.daily_sensor_conditions WHERE metric_date >= :lo AND metric_date < :hi "
            "GROUP BY 1 ORDER BY 1"
        ),
        {"lo": lo, "hi": hi},
    ).all()
    return [(d, p) for d, p in rows]
