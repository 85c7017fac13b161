"""Hourly, weekly and monthly rollups in the old ETL's bi.* tables (daily: daily.py)."""

from datetime import timedelta

import dagster as dg

from agg_pipeline.defs import partitions
from agg_pipeline.defs.common import (
    BACKFILL,
    materialize_result,
    partition_window,
    write_context,
    write_with_retries,
)
from agg_pipeline.defs.loaded import TIMEZONE
from agg_pipeline.defs.readings import charts, checks
from agg_pipeline.defs.readings.downsample import readings_1m
from agg_pipeline.defs.readings.raw import raw_readings
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline.warehouse.writes import readings as writers

STATS = (
    "avg, min, max, sample_count and sample stddev (NULL for one reading) merged exactly from "
    "the level below with Chan's parallel formula on (count, mean, M2); exact median "
    "computed from the raw readings while they are retained (metadata `median_status` says "
    "when they are not)."
)
_TZ = TIMEZONE


def _run(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    influx: InfluxResource,
    asset: str,
    level: writers.Level,
    chart: bool = False,
) -> dg.MaterializeResult:
    ctx, window = write_context(warehouse, influx), partition_window(context)
    report = write_with_retries(context, lambda: writers.write_merged_level(ctx, level, window))
    results = checks.evaluate(warehouse.get_engine(), asset, window, ctx.settings.timezone)
    result = materialize_result(context, report, warehouse, list(results))
    if not chart:
        return result
    picture = charts.rollup_chart(
        warehouse.get_engine(), level.table, "hour_start", window.start, window.end
    )
    return dg.MaterializeResult(
        metadata={**(result.metadata or {}), "chart": picture}, check_results=result.check_results
    )


@dg.asset(
    partitions_def=partitions.hourly,
    deps=[readings_1m, raw_readings],
    backfill_policy=BACKFILL,
    freshness_policy=dg.FreshnessPolicy.time_window(
        fail_window=timedelta(hours=2), warn_window=timedelta(minutes=75)
    ),
    check_specs=checks.check_specs("rollup_hourly"),
    pool="bi.hourly_sensor_agg",
    group_name="rollups",
    kinds={"postgres"},
    code_version="1",
    description="Per sensor and hour: `bi.hourly_sensor_agg` keyed (sensor_id, hour_start). "
    + STATS,
)
def rollup_hourly(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, influx: InfluxResource
) -> dg.MaterializeResult:
    return _run(context, warehouse, influx, "rollup_hourly", writers.LEVEL_HOURLY, chart=True)


@dg.asset(
    partitions_def=partitions.weekly,
    deps=["rollup_daily", raw_readings],
    backfill_policy=BACKFILL,
    freshness_policy=dg.FreshnessPolicy.cron(
        deadline_cron="0 4 * * 1", lower_bound_delta=timedelta(hours=4), timezone=_TZ
    ),
    check_specs=checks.check_specs("rollup_weekly"),
    pool="bi.weekly_sensor_agg",
    group_name="rollups",
    kinds={"postgres"},
    code_version="1",
    description="Per sensor and week (Monday to Sunday, local days): `bi.weekly_sensor_agg` "
    "keyed (sensor_id, week_start). " + STATS,
)
def rollup_weekly(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, influx: InfluxResource
) -> dg.MaterializeResult:
    return _run(context, warehouse, influx, "rollup_weekly", writers.LEVEL_WEEKLY)


@dg.asset(
    partitions_def=partitions.monthly,
    deps=["rollup_daily", raw_readings],
    backfill_policy=BACKFILL,
    # The 03:30 schedule on the 1st, with its hours of headroom as for the weekly level.
    freshness_policy=dg.FreshnessPolicy.cron(
        deadline_cron="0 6 1 * *", lower_bound_delta=timedelta(hours=6), timezone=_TZ
    ),
    check_specs=checks.check_specs("rollup_monthly"),
    pool="bi.monthly_sensor_agg",
    group_name="rollups",
    kinds={"postgres"},
    code_version="1",
    description="Per sensor and local calendar month: `bi.monthly_sensor_agg` keyed "
    "(sensor_id, month_start). " + STATS + " The median can be turned off "
    "(AGG_PIPELINE_MONTHLY_MEDIAN=false): it reads the month's raw readings again.",
)
def rollup_monthly(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, influx: InfluxResource
) -> dg.MaterializeResult:
    return _run(context, warehouse, influx, "rollup_monthly", writers.LEVEL_MONTHLY)
