"""Maintenance: dashboard view refresh (an asset) and retention cleanup (a job)."""

from datetime import date, datetime, timedelta

import dagster as dg
from pydantic import Field

from agg_pipeline.config.catalogue import get_catalogue
from agg_pipeline.config.settings import get_settings
from agg_pipeline.defs import partitions
from agg_pipeline.defs.events import levels as event_levels
from agg_pipeline.defs.readings.downsample import readings_1m
from agg_pipeline.warehouse import matviews, retention
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline.warehouse.writes import readings as writers

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
    refreshed = matviews.refresh_all(warehouse.get_engine(), context.log.info)
    return dg.MaterializeResult(metadata={"views": dg.MetadataValue.json(refreshed)})


# --------------------------------------------------------------------------------------
# Retention
# --------------------------------------------------------------------------------------


class RetentionConfig(dg.Config):
    """Per-run retention; every ``*_days`` left unset comes from its AGG_PIPELINE_RETENTION_*
    setting."""

    dry_run: bool = False
    """Report what would be deleted, delete nothing."""
    retention_days: int | None = Field(default=None, ge=1, le=36_500)
    """The old cleanup_old_data_task(retention_days=N): raw readings, raw events, raw
    diagnostics and the analytics raw events keep N days, hourly rollups (readings and
    events) and device metrics 2 x N (unless set below)."""
    raw_days: int | None = Field(default=None, ge=1, le=36_500)
    downsample_days: int | None = Field(default=None, ge=1, le=36_500)
    hourly_days: int | None = Field(default=None, ge=1, le=36_500)
    device_metrics_days: int | None = Field(default=None, ge=0, le=36_500)
    diagnostic_summary_days: int | None = Field(default=None, ge=0, le=36_500)
    patterns_days: int | None = Field(default=None, ge=0, le=36_500)
    events_days: int | None = Field(default=None, ge=1, le=36_500)
    raw_diagnostics_days: int | None = Field(default=None, ge=1, le=36_500)
    analytics_raw_days: int | None = Field(default=None, ge=1, le=36_500)
    analytics_hourly_days: int | None = Field(default=None, ge=0, le=36_500)

    def policy(self) -> retention.Policy:
        n = self.retention_days
        old_style = {
            "raw_days": n,
            "events_days": n,
            "raw_diagnostics_days": n,
            "analytics_raw_days": n,
            "hourly_days": 2 * n if n else None,
            "analytics_hourly_days": 2 * n if n else None,
            "device_metrics_days": 2 * n if n else None,
        }
        explicit = {
            k: getattr(self, k)
            for k in (
                "raw_days",
                "downsample_days",
                "hourly_days",
                "device_metrics_days",
                "diagnostic_summary_days",
                "patterns_days",
                "events_days",
                "raw_diagnostics_days",
                "analytics_raw_days",
                "analytics_hourly_days",
            )
        }
        merged = {
            k: explicit.get(k) if explicit.get(k) is not None else old_style.get(k)
            for k in set(old_style) | set(explicit)
        }
        return retention.Policy.from_settings(get_settings(), **merged)


def _days_materialized(instance: dg.DagsterInstance, asset_names: tuple[str, ...]) -> set[date]:
    """Days (daily partition keys) that every one of ``asset_names`` has materialized."""
    days: set[date] | None = None
    for name in asset_names:
        keys = instance.get_materialized_partitions(dg.AssetKey(name))
        mine = {date.fromisoformat(k) for k in keys}
        days = mine if days is None else days & mine
    return days or set()


@dg.op(
    description="Deletes what is past its retention, never what no rollup holds: raw "
    "readings only for days whose every rollup is complete and counts them, raw events / "
    "diagnostics / analytics events only for days their assets have run, derived tables "
    "by age "
    "(daily and weekly rollups are kept forever).",
    tags={"kind": "maintenance"},
)
def retention_cleanup_op(
    context: dg.OpExecutionContext, config: RetentionConfig, warehouse: WarehouseResource
) -> dg.Output[dict]:
    settings = get_settings()
    today = datetime.now(settings.zone).date()
    engine = warehouse.get_engine()
    policy = config.policy()
    catalogue = get_catalogue()
    origin = partitions.hourly.start_time_for_partition_key(
        partitions.hourly.get_first_partition_key()
    )
    results = retention.cleanup(
        engine,
        catalogue,
        settings,
        policy,
        today,
        config.dry_run,
        origin,
        lambda conn, days: writers.condition_bands(
            conn, catalogue, days, settings.critical_margin_pct
        ).keys(),
        lambda assets: _days_materialized(context.instance, assets),
        {
            table: (event_levels.time_column_of(table), rolled_up)
            for table, rolled_up in event_levels.raw_tables_and_their_days(context.instance).items()
        },
        event_levels.hourly_tables(),
        event_levels.id_columns(),
    )

    verb = "would delete" if config.dry_run else "deleted"
    kept: dict[str, str] = {}
    for table, res in results.items():
        if res.skipped:
            context.log.info(f"{table}: {res.skipped}")
            continue
        dropped = (
            f", {len(res.partitions_dropped)} partitions dropped" if res.partitions_dropped else ""
        )
        forgot = f", {res.ids_forgotten} ids left the id ledger" if res.ids_forgotten else ""
        context.log.info(f"{table}: {verb} {res.rows} rows (cutoff {res.cutoff}){dropped}{forgot}")
        for day, why in res.days_kept.items():
            kept[f"{table} {day}"] = why
            context.log.warning(f"{table}: {day} kept: {why}")
    summary: dict[str, object] = {"dry_run": config.dry_run}
    summary.update({t: r.as_dict() for t, r in results.items()})
    suffix = "to_delete" if config.dry_run else "deleted"
    return dg.Output(
        summary,
        metadata={
            "dry_run": config.dry_run,
            **{f"{t}_rows_{suffix}": r.rows for t, r in results.items() if not r.skipped},
            "raw_days_kept": dg.MetadataValue.json(kept),
            "policy_days": dg.MetadataValue.json(
                {k: v for k, v in vars(policy).items() if k.endswith(("_days", "_hours"))}
            ),
        },
    )


@dg.job(
    description="Retention cleanup (the old cleanup_old_data task). Run config "
    "`ops: {retention_cleanup_op: {config: {dry_run: true}}}` reports without deleting; "
    "`retention_days: N` (or raw_days, hourly_days, ...) overrides the settings for one run.",
    tags={"dagster/max_runtime": str(2 * 3600)},
)
def retention_cleanup() -> None:
    retention_cleanup_op()
