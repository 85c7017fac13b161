"""Maintenance: dashboard view refresh (an asset) and retention cleanup (a job)."""

from datetime import UTC, date, datetime, time, timedelta

import dagster as dg
import sqlalchemy as sa

from agg_pipeline.assets.downsample import readings_1m
from agg_pipeline.catalogue import get_catalogue
from agg_pipeline.compute.statements import quote_ident
from agg_pipeline.resources.warehouse import WarehouseResource
from agg_pipeline.settings import get_settings

# --------------------------------------------------------------------------------------
# Dashboard views
# --------------------------------------------------------------------------------------


@dg.asset(
    deps=[readings_1m],
    freshness_policy=dg.FreshnessPolicy.time_window(
        fail_window=timedelta(minutes=30), warn_window=timedelta(minutes=20)
    ),
    pool="bi.views",
    group_name="dashboards",
    kinds={"postgres"},
)
def dashboard_views(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Refreshes every materialized view in schema `bi` (e.g. `bi.sensor_latest`).

    CONCURRENTLY where the view has a unique index (readers are never blocked), otherwise
    a plain refresh. Scheduled every 15 minutes.
    """
    refreshed = {}
    engine = warehouse.get_engine()
    with engine.connect() as conn:
        views = conn.execute(
            sa.text(
                "SELECT m.matviewname, m.ispopulated, EXISTS (SELECT 1 FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = "
                "c.relnamespace WHERE n.nspname = 'bi' AND c.relname = m.matviewname "
                "AND i.indisunique) FROM pg_matviews m WHERE m.schemaname = 'bi' ORDER BY 1"
            )
        ).all()
    for name, populated, unique in views:
        concurrently = "CONCURRENTLY " if unique and populated else ""
        start = datetime.now(UTC)
        with engine.begin() as conn:
            # `name` comes from the catalog and is quoted as an identifier.
            quoted = conn.dialect.identifier_preparer.quote(name)
            conn.execute(sa.text(f"REFRESH MATERIALIZED VIEW {concurrently}bi.{quoted}"))
            rows = conn.execute(sa.text(f"SELECT count(*) FROM bi.{quoted}")).scalar_one()
        refreshed[f"bi.{name}"] = {
            "rows": rows,
            "seconds": round((datetime.now(UTC) - start).total_seconds(), 3),
            "concurrently": bool(concurrently),
        }
        context.log.info(f"refreshed bi.{name}: {rows} rows")
    return dg.MaterializeResult(metadata={"views": dg.MetadataValue.json(refreshed)})


# --------------------------------------------------------------------------------------
# Retention
# --------------------------------------------------------------------------------------


class RetentionConfig(dg.Config):
    dry_run: bool = False
    """Report what would be deleted, delete nothing."""


# A raw day may go only when everything computed from it is safely stored: its daily
# rollup exists for every sensor that had 1-minute windows, and no hourly, daily or
# weekly median of it is missing (medians cannot be recomputed once raw is gone).
_SAFE_DAYS = """
WITH days AS (SELECT unnest(CAST(:days AS date[])) AS day)
SELECT d.day,
       EXISTS (SELECT 1 FROM bi.daily_sensor_agg a WHERE a.metric_date = d.day) AS has_daily,
       NOT EXISTS (SELECT 1 FROM bi.daily_sensor_agg a
                   WHERE a.metric_date = d.day AND a.median_value IS NULL) AS daily_medians,
       NOT EXISTS (SELECT 1 FROM bi.hourly_sensor_agg h
                   WHERE h.hour_start >= (d.day::timestamp AT TIME ZONE :tz)
                     AND h.hour_start < ((d.day + 1)::timestamp AT TIME ZONE :tz)
                     AND h.median_value IS NULL) AS hourly_medians,
       NOT EXISTS (SELECT 1 FROM bi.weekly_sensor_agg w
                   WHERE w.week_start = date_trunc('week', d.day)::date
                     AND w.median_value IS NULL)
         AND EXISTS (SELECT 1 FROM bi.weekly_sensor_agg w
                     WHERE w.week_start = date_trunc('week', d.day)::date) AS weekly_medians,
       NOT EXISTS (SELECT r.sensor_id FROM bi.readings_1m r
                   WHERE r.window_start >= (d.day::timestamp AT TIME ZONE :tz)
                     AND r.window_start < ((d.day + 1)::timestamp AT TIME ZONE :tz)
                   EXCEPT SELECT a.sensor_id FROM bi.daily_sensor_agg a
                   WHERE a.metric_date = d.day) AS all_sensors_rolled_up
FROM days AS d ORDER BY d.day
"""


def _delete_in_batches(engine, table: str, where: str, params: dict, batch: int) -> int:
    """DELETE matching rows, ``batch`` at a time, one short transaction each."""
    total = 0
    while True:
        with engine.begin() as conn:
            n = conn.execute(
                sa.text(
                    f"DELETE FROM {table} WHERE ctid = ANY (ARRAY("
                    f"SELECT ctid FROM {table} WHERE {where} LIMIT :batch))"
                ),
                {**params, "batch": batch},
            ).rowcount
        total += n
        if n < batch:
            return total


def _count(engine, table: str, where: str, params: dict) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(f"SELECT count(*) FROM {table} WHERE {where}"), params
        ).scalar_one()


def _raw_retention(engine, source, settings, today, dry_run, batch, summary) -> dict[str, str]:
    """Delete whole local days of raw readings past retention, only where every level that
    needs them is complete; returns the days kept and why."""
    zone = settings.zone
    raw_table, raw_time = quote_ident(source.table), quote_ident(source.time_column)
    # Raw readings: whole local days older than the cutoff, and only safe ones.
    raw_cutoff = today - timedelta(days=settings.retention_raw_days)
    cutoff_ts = datetime.combine(raw_cutoff, time(0), tzinfo=zone)
    with engine.connect() as conn:
        oldest = conn.execute(
            sa.text(f"SELECT min({raw_time}) FROM {raw_table} WHERE {raw_time} < :c"),
            {"c": cutoff_ts},
        ).scalar_one()
    days: list[date] = []
    if oldest is not None:
        day = oldest.astimezone(zone).date()
        while day < raw_cutoff:
            days.append(day)
            day += timedelta(days=1)
    raw_deleted, kept = 0, {}
    if days:
        with engine.connect() as conn:
            verdicts = conn.execute(
                sa.text(_SAFE_DAYS), {"days": days, "tz": settings.timezone}
            ).all()
        for day, *flags in verdicts:
            names = (
                "daily rollup",
                "daily medians",
                "hourly medians",
                "weekly medians",
                "all sensors rolled up",
            )
            missing = [n for n, ok in zip(names, flags, strict=True) if not ok]
            if missing:
                kept[str(day)] = "not yet: " + ", ".join(missing)
                continue
            start = datetime.combine(day, time(0), tzinfo=zone)
            params = {
                "s": start,
                "e": datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone),
            }
            where = f"{raw_time} >= :s AND {raw_time} < :e"
            raw_deleted += (
                _count(engine, raw_table, where, params)
                if dry_run
                else _delete_in_batches(engine, raw_table, where, params, batch)
            )
    summary[source.table] = {"cutoff": str(raw_cutoff), "rows": raw_deleted, "days_kept": kept}
    return kept


@dg.op(
    description="Deletes raw readings, 1m/5m windows and hourly rollups past their retention "
    "(daily and weekly rollups are kept forever), in bounded batches.",
    tags={"kind": "maintenance"},
)
def retention_cleanup_op(
    context: dg.OpExecutionContext, config: RetentionConfig, warehouse: WarehouseResource
) -> dg.Output[dict]:
    settings = get_settings()
    zone = settings.zone
    today = datetime.now(zone).date()
    engine = warehouse.get_engine()
    batch = settings.retention_batch_rows
    summary: dict[str, object] = {"dry_run": config.dry_run}
    catalogue = get_catalogue()
    source = catalogue.source

    if not catalogue.raw_in_postgres:
        # Raw points in InfluxDB expire by the bucket's own retention rule.
        summary["raw"] = {
            "skipped": f"raw readings live in {source.describe()}: "
            "the bucket's retention rule applies"
        }
        kept: dict[str, str] = {}
    else:
        kept = _raw_retention(engine, source, settings, today, config.dry_run, batch, summary)
    for day, why in kept.items():
        context.log.warning(f"raw readings of {day} kept: {why}")

    # Derived levels: by age only (they are what remains).
    for table, key, days_kept in (
        ("bi.readings_1m", "window_start", settings.retention_downsample_days),
        ("bi.readings_5m", "window_start", settings.retention_downsample_days),
        ("bi.hourly_sensor_agg", "hour_start", settings.retention_hourly_days),
        ("bi.hourly_medians", "hour_start", settings.retention_hourly_days),
    ):
        cutoff = datetime.combine(today - timedelta(days=days_kept), time(0), tzinfo=zone)
        where, params = f"{key} < :c", {"c": cutoff}
        n = (
            _count(engine, table, where, params)
            if config.dry_run
            else _delete_in_batches(engine, table, where, params, batch)
        )
        summary[table] = {"cutoff": cutoff.isoformat(), "rows": n}
    # Staging rows of runs that crashed mid-pass (sharded staging, resources/sources.py).
    if not config.dry_run:
        with engine.begin() as conn:
            for (name,) in conn.execute(
                sa.text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'ops' "
                    "AND tablename LIKE 'staging_%'"
                )
            ).all():
                quoted = conn.dialect.identifier_preparer.quote(name)
                conn.execute(
                    sa.text(f"DELETE FROM ops.{quoted} WHERE staged_at < now() - interval '1 day'")
                )
    verb = "would delete" if config.dry_run else "deleted"
    for table, info in summary.items():
        if isinstance(info, dict):
            context.log.info(f"{table}: {verb} {info['rows']} rows (cutoff {info['cutoff']})")
    return dg.Output(
        summary,
        metadata={
            "dry_run": config.dry_run,
            **{
                f"{t}_rows_{'to_delete' if config.dry_run else 'deleted'}": i["rows"]
                for t, i in summary.items()
                if isinstance(i, dict)
            },
            "raw_days_kept": dg.MetadataValue.json(kept),
        },
    )


@dg.job(
    description="Retention cleanup (the old cleanup_old_data task). Run config "
    "`ops: {retention_cleanup_op: {config: {dry_run: true}}}` reports without deleting.",
    tags={"dagster/max_runtime": str(2 * 3600)},
)
def retention_cleanup():
    retention_cleanup_op()
