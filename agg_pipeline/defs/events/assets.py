"""Event metrics: the assets, jobs and schedules of the declared event rollups (issue 13).

Every (rollup, grain) of the events catalogue (AGG_PIPELINE_EVENTS_CATALOGUE, shipped:
``catalogues/analytics.yaml``) is one partitioned asset named after its table
(``execution_metrics_hourly`` -> ``analytics.execution_metrics_hourly``), computed from
its raw event table by warehouse/events.py; ``analytics_views`` refreshes the three
``analytics.mv_*`` views. One module on purpose: the family moves as one piece.
"""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import dagster as dg
import sqlalchemy as sa

from agg_pipeline.config import events as spec
from agg_pipeline.config.events import Grain, RollupLevel
from agg_pipeline.config.settings import get_settings
from agg_pipeline.core.windows import Window
from agg_pipeline.defs.automation import (
    RUNNING,
    STOPPED,
    partition_schedule,
    previous_day,
    previous_hour,
    previous_week,
)
from agg_pipeline.defs.common import (
    BACKFILL,
    partition_window,
    run_reason,
    write_with_retries,
)
from agg_pipeline.defs.events.levels import GRAIN_JOBS, LEVELS, PARTITIONS, max_runtime
from agg_pipeline.defs.loaded import EVENTS_CATALOGUE, SETTINGS
from agg_pipeline.warehouse import events as sql
from agg_pipeline.warehouse.engine import WarehouseResource

GROUP = "events"
_settings = SETTINGS  # (defs/loaded.py)
_catalogue = EVENTS_CATALOGUE
_TZ = _settings.timezone

# Each grain is due a while after its schedule (below) has run.
FRESHNESS = {
    Grain.HOURLY: dg.FreshnessPolicy.time_window(
        fail_window=timedelta(hours=2), warn_window=timedelta(minutes=75)
    ),
    Grain.DAILY: dg.FreshnessPolicy.cron(
        deadline_cron="0 3 * * *", lower_bound_delta=timedelta(hours=3), timezone=_TZ
    ),
    Grain.WEEKLY: dg.FreshnessPolicy.cron(
        deadline_cron="0 5 * * 1", lower_bound_delta=timedelta(hours=5), timezone=_TZ
    ),
    Grain.MONTHLY: dg.FreshnessPolicy.cron(
        deadline_cron="0 6 1 * *", lower_bound_delta=timedelta(hours=6), timezone=_TZ
    ),
}


def _describe(level: RollupLevel) -> str:
    keys = ", ".join([*level.spec.dimensions, level.bucket_column])
    measures = ", ".join(f"{n} ({m.agg})" for n, m in level.measures.items())
    return (
        f"Event rollup `{level.rollup}`, {level.grain.value}: `{level.table}` keyed ({keys}) "
        f"from `{level.source.table}`: {measures}. Exact at every grain: count, sum, avg, min, "
        "max and stddev merged from the level below when its partitions are current, "
        "percentiles and distinct counts always from the raw events; bad events (duplicate, "
        "future, the source's reject rules) counted by reason when the raw events are read."
    )


def _metadata(
    context: dg.AssetExecutionContext, report: sql.EventWriteReport, level: RollupLevel
) -> dict:
    reasons = sql.reasons(level)
    return {
        "table": dg.MetadataValue.text(report.table),
        "window": dg.MetadataValue.text(str(report.window)),
        "reason": dg.MetadataValue.text(run_reason(context)),
        "rows_written": dg.MetadataValue.int(report.rows_written),
        "rows_replaced": dg.MetadataValue.int(report.rows_deleted),
        "events_read": dg.MetadataValue.int(report.events_read),
        "good_events": dg.MetadataValue.int(report.good_events),
        "rejected_total": dg.MetadataValue.int(sum(report.rejected.values())),
        "rejected_by_reason": dg.MetadataValue.json(
            {r: report.rejected.get(r, 0) for r in reasons}
        ),
        "chunks": dg.MetadataValue.int(report.chunks),
        "merged_chunks": dg.MetadataValue.int(report.merged_chunks),
        **({"notes": dg.MetadataValue.md("\n".join(report.notes))} if report.notes else {}),
    }


def _adds_up_check(
    warehouse: WarehouseResource, level: RollupLevel, finer: RollupLevel, window: Window
) -> dg.AssetCheckResult:
    found = sql.counts_add_up(warehouse.get_engine(), level, finer, window, get_settings().zone)
    return dg.AssetCheckResult(
        check_name=f"counts_match_{finer.asset}",
        passed=found.mismatched == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "keys_compared": found.keys,
            "keys_mismatched": found.mismatched,
            "examples": dg.MetadataValue.json(found.examples),
        },
        description=f"the counts of {level.asset} are the sums of {finer.asset}'s in the window "
        "(a mismatch: the finer level is missing or older than the raw events)",
    )


def _rollup_asset(level: RollupLevel) -> dg.AssetsDefinition:
    finer = sql.finer_level(level, LEVELS)
    checks = (
        [
            dg.AssetCheckSpec(
                f"counts_match_{finer.asset}",
                asset=level.asset,
                description=f"Counts add up: {level.asset}'s counts are the sums of "
                f"{finer.asset}'s (WARN).",
            )
        ]
        if finer
        else []
    )

    @dg.asset(
        name=level.asset,
        partitions_def=PARTITIONS[level.grain],
        deps=[spec.source_asset(_catalogue, level.spec.source)],
        backfill_policy=BACKFILL,
        freshness_policy=FRESHNESS[level.grain],
        check_specs=checks,
        pool=level.table,
        group_name=GROUP,
        kinds={"postgres"},
        code_version="1",
        description=_describe(level),
    )
    def _asset(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        settings, window = get_settings(), partition_window(context)
        report = write_with_retries(
            context,
            lambda: sql.write_level(
                warehouse, level, window, settings.zone, settings.future_tolerance_seconds, finer
            ),
        )
        for note in report.notes:
            context.log.warning(note)
        if report.rejected:
            context.log.warning(
                f"{sum(report.rejected.values())} bad events not counted: "
                + ", ".join(f"{k} {v}" for k, v in sorted(report.rejected.items()))
            )
        context.log.info(
            f"{level.table} {window}: {report.rows_written} rows from {report.good_events} "
            f"events ({report.rows_deleted} replaced)"
        )
        results = [_adds_up_check(warehouse, level, finer, window)] if finer else []
        return dg.MaterializeResult(
            metadata=_metadata(context, report, level), check_results=results
        )

    return _asset


SOURCES = [
    dg.AssetSpec(
        spec.source_asset(_catalogue, name),
        group_name=GROUP,
        kinds={"postgres"},
        description=f"Raw events `{src.table}` (external: written by the application).",
    )
    for name, src in _catalogue.sources.items()
]
ROLLUPS = [_rollup_asset(level) for level in LEVELS]

# --------------------------------------------------------------------------------------
# analytics_views
# --------------------------------------------------------------------------------------

VIEWS = (
    "analytics.mv_daily_user_metrics",
    "analytics.mv_hourly_execution_stats",
    "analytics.mv_workspace_summary",
)
_VIEW_DEPS = [
    a
    for a in ("execution_metrics_daily", "user_activity_daily", "credit_consumption_daily")
    if a in {lv.asset for lv in LEVELS}
] + [s.key for s in SOURCES if s.key.path[0] in ("raw_executions", "raw_user_activity")]


@dg.asset(
    deps=_VIEW_DEPS,
    freshness_policy=dg.FreshnessPolicy.time_window(
        fail_window=timedelta(minutes=30), warn_window=timedelta(minutes=20)
    ),
    pool="analytics.views",
    group_name=GROUP,
    kinds={"postgres"},
)
def analytics_views(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Refreshes `analytics.mv_daily_user_metrics`, `analytics.mv_hourly_execution_stats`
    and `analytics.mv_workspace_summary` (the old refresh_materialized_views), CONCURRENTLY
    once populated (readers are never blocked; each has a unique index), in the configured
    zone (its "last 30 days" are local dates). Scheduled every 15 minutes."""
    refreshed = {}
    engine = warehouse.get_engine()
    for view in VIEWS:
        schema, name = view.split(".")
        start = datetime.now(UTC)
        with engine.begin() as conn:
            populated = conn.execute(
                sa.text("SELECT ispopulated FROM pg_matviews WHERE schemaname = :s AND "
                        "matviewname = :n"),
                {"s": schema, "n": name},
            ).scalar_one()  # fmt: skip
            conn.execute(sa.text("SELECT set_config('TimeZone', :tz, true)"), {"tz": _TZ})
            concurrently = "CONCURRENTLY " if populated else ""
            conn.execute(sa.text(f"REFRESH MATERIALIZED VIEW {concurrently}{view}"))
            rows = conn.execute(sa.text(f"SELECT count(*) FROM {view}")).scalar_one()
        refreshed[view] = {
            "rows": rows,
            "seconds": round((datetime.now(UTC) - start).total_seconds(), 3),
            "concurrently": bool(concurrently),
        }
        context.log.info(f"refreshed {view}: {rows} rows")
    return dg.MaterializeResult(metadata={"views": dg.MetadataValue.json(refreshed)})


EVENT_ASSETS = [*SOURCES, *ROLLUPS, analytics_views]

# --------------------------------------------------------------------------------------
# Jobs and schedules: the old Celery beat times
# --------------------------------------------------------------------------------------


def previous_month(when: datetime) -> str:
    first = when.astimezone(_settings.zone).date().replace(day=1)
    return (first - timedelta(days=1)).replace(day=1).isoformat()


# grain -> (schedule, cron, partition of a tick, switch field, when); the jobs (one per
# grain) are levels.GRAIN_JOBS: self-healing runs them too.
_PLAN: dict[Grain, tuple[str, str, Callable[[datetime], str], str, str]] = {
    Grain.HOURLY: (
        "events_hourly_at_05", "5 * * * *", previous_hour,
        "schedule_events_hourly", "At :05, the previous hour",
    ),
    Grain.DAILY: (
        "events_daily_at_0100", "0 1 * * *", previous_day,
        "schedule_events_daily", "At 01:00, the previous day",
    ),
    Grain.WEEKLY: (
        "events_weekly_monday_0200", "0 2 * * 1", previous_week,
        "schedule_events_weekly", "Monday 02:00, the previous week",
    ),
    Grain.MONTHLY: (
        "events_monthly_first_0300", "0 3 1 * *", previous_month,
        "schedule_events_monthly", "On the 1st at 03:00, the previous month",
    ),
}  # fmt: skip
_OLD_FLAGS = {
    Grain.HOURLY: "HOURLY_ROLLUP_ENABLED",
    Grain.DAILY: "DAILY_ROLLUP_ENABLED",
    Grain.WEEKLY: "WEEKLY_ROLLUP_ENABLED",
    Grain.MONTHLY: "MONTHLY_ROLLUP_ENABLED",
}

EVENT_JOBS: list = []
EVENT_SCHEDULES: list = []
for _grain, (_name, _cron, _pick, _switch, _when) in _PLAN.items():
    if _grain not in GRAIN_JOBS:
        continue
    _events_job = GRAIN_JOBS[_grain]
    EVENT_JOBS.append(_events_job)
    EVENT_SCHEDULES.append(
        partition_schedule(
            _name,
            _cron,
            _events_job,
            _pick,
            PARTITIONS[_grain],
            getattr(_settings, _switch),
            f"{_when}'s event rollups (the old Celery {_grain.value}_rollup). Switch: "
            f"AGG_PIPELINE_{_switch.upper()} (or the old {_OLD_FLAGS[_grain]}).",
        )
    )

analytics_views_job = dg.define_asset_job(
    "analytics_views_refresh", selection=[analytics_views], tags=max_runtime(900)
)
EVENT_JOBS.append(analytics_views_job)
EVENT_SCHEDULES.append(
    dg.ScheduleDefinition(
        name="analytics_views_every_15_minutes",
        cron_schedule="*/15 * * * *",
        job=analytics_views_job,
        execution_timezone=_TZ,
        default_status=RUNNING if _settings.schedule_analytics_views else STOPPED,
        description="Refresh the analytics.mv_* views (the old refresh_materialized_views). "
        "Switch: AGG_PIPELINE_SCHEDULE_ANALYTICS_VIEWS.",
    )
)
