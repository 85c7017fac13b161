"""Per-partition figures of a multi-partition run, read back from what a table holds
(``defs/common.materialize_result`` records them on each partition): rows, series and
first / last reading per bucket, and the late rows recorded per raw hour."""

from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa

from agg_pipeline.core.hierarchy import DERIVED
from agg_pipeline.warehouse.statements import quote_ident

# (bucket column, series column, has first/last reading times, bucket is a local date):
# every level of the hierarchy, and the other families' tables.
PARTITION_FIGURES: dict[str, tuple[str, str, bool, bool]] = {
    **{lv.table: (lv.bucket_column, "sensor_id", True, lv.key_is_date) for lv in DERIVED},
    "bi.daily_sensor_conditions": ("metric_date", "sensor_id", False, True),
    "bi.device_metrics_hourly": ("hour_start", "device_id", False, False),
    "bi.diagnostic_summary_daily": ("metric_date", "device_id", False, True),
}


def bucket_figures(
    conn: sa.Connection,
    table: str,
    lo: date | datetime,
    hi: date | datetime,
    origin: datetime,
) -> list[tuple[object, int, int, datetime | None, datetime | None]]:
    """(bucket, rows, series, first reading, last reading) of ``table`` (one of
    ``PARTITION_FIGURES``) in [lo, hi): by local date, or by hour from ``origin``."""
    key, series, timed, is_date = PARTITION_FIGURES[table]
    k = quote_ident(key)
    bucket = k if is_date else f"date_bin('1 hour', {k}, :origin)"
    times = "min(first_reading_at), max(last_reading_at)" if timed else "NULL, NULL"
    rows = conn.execute(
        sa.text(
            f"SELECT {bucket} AS b, count(*), count(DISTINCT {quote_ident(series)}), "
            f"{times} FROM {quote_ident(table)} WHERE {k} >= :lo AND {k} < :hi GROUP BY 1"
        ),
        {"lo": lo, "hi": hi, "origin": origin},
    ).all()
    return [(b, int(n), int(m), t0, t1) for b, n, m, t0, t1 in rows]


def late_hours(
    conn: sa.Connection, start: datetime, end: datetime
) -> list[tuple[datetime, int, datetime]]:
    """(hour, late rows, last late arrival) recorded for the raw hours in [start, end)."""
    rows = conn.execute(
        sa.text(
            "SELECT hour_start, late_rows, last_late_at FROM raw.readings_late_hours "
            "WHERE hour_start >= :s AND hour_start < :e ORDER BY hour_start"
        ),
        {"s": start, "e": end},
    )
    return [(hour, int(n), last) for hour, n, last in rows]


def chart_bins(
    engine: sa.Engine, table: str, bucket: str, lo: datetime | date, hi: datetime | date,
    points: int,
) -> list[tuple[str, int, datetime | date, float, float, float]]:  # fmt: skip
    """The rollup chart's points (defs/readings/charts.py): per field, up to ``points``
    bins of ``table``'s buckets in [lo, hi) (``ntile``: a year-long backfill costs one
    grouped query), each (field, bin, first bucket, mean of means, min, max)."""
    col = quote_ident(bucket)
    with engine.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                sa.text(
                    "WITH per_bucket AS ("
                    f"  SELECT s.field, t.{col} AS b, avg(t.avg_value) AS mean, "
                    "   min(t.min_value) AS lo, max(t.max_value) AS hi "
                    f"  FROM {quote_ident(table)} AS t "
                    "   JOIN iot.sensors AS s ON s.id = t.sensor_id "
                    f"  WHERE t.{col} >= :lo AND t.{col} < :hi GROUP BY 1, 2), "
                    "binned AS (SELECT *, "
                    "  ntile(:points) OVER (PARTITION BY field ORDER BY b) AS bin "
                    "  FROM per_bucket) "
                    "SELECT field, bin, min(b), avg(mean), min(lo), max(hi) FROM binned "
                    "GROUP BY field, bin ORDER BY field, bin"
                ),
                {"lo": lo, "hi": hi, "points": points},
            )
        ]


def table_rows(conn: sa.Connection, table: str, timeout_s: float) -> int | None:
    """Rows of ``table`` ("schema.name": ours, not input): exact when the count finishes
    within ``timeout_s`` (and readable), else the planner's estimate (None: never
    analyzed). A missing table raises: there is nothing to estimate."""
    schema, name = table.split(".")
    try:
        with conn.begin_nested():  # a failed count rolls back to here; the timeout lasts
            # until the transaction ends (each status read is its own)
            conn.execute(
                sa.text("SELECT set_config('statement_timeout', :ms, true)"),
                {"ms": f"{int(timeout_s * 1000)}ms"},
            )
            return conn.execute(sa.text(f"SELECT count(*) FROM {quote_ident(table)}")).scalar_one()
    except sa.exc.DBAPIError:  # statement_timeout (QueryCanceled), no privilege, ...
        est = conn.execute(
            sa.text(
                "SELECT reltuples::bigint FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = :s AND c.relname = :t"
            ),
            {"s": schema, "t": name},
        ).scalar()
        if est is None:
            raise
        return int(est) if est >= 0 else None
