"""Hourly, daily and weekly rollups in the old ETL's bi.* tables."""

import dagster as dg

from agg_pipeline import partitions, writers
from agg_pipeline.assets._common import (
    BACKFILL,
    materialize_result,
    partition_window,
    write_context,
)
from agg_pipeline.assets.downsample import readings_1m
from agg_pipeline.assets.raw import raw_readings
from agg_pipeline.resources.warehouse import WarehouseResource

_STATS = (
    "avg, min, max, sample_count and sample stddev (NULL for one reading) merged exactly from "
    "the level below with Chan's parallel formula on (count, mean, M2); exact median "
    "computed from the raw readings while they are retained (metadata `median_status` says "
    "when they are not)."
)


@dg.asset(
    partitions_def=partitions.hourly,
    deps=[readings_1m, raw_readings],
    backfill_policy=BACKFILL,
    group_name="rollups",
    kinds={"postgres"},
    code_version="1",
    description="Per sensor and hour: `bi.hourly_sensor_agg` keyed (sensor_id, hour_start). "
    + _STATS,
)
def rollup_hourly(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    report = writers.write_merged_level(
        write_context(warehouse), writers.LEVEL_HOURLY, partition_window(context)
    )
    return materialize_result(context, report)


@dg.asset(
    partitions_def=partitions.daily,
    deps=[rollup_hourly, raw_readings],
    backfill_policy=BACKFILL,
    group_name="rollups",
    kinds={"postgres"},
    code_version="1",
    description="Per sensor and local day: `bi.daily_sensor_agg` keyed (sensor_id, "
    "metric_date). " + _STATS + " Also carries time_in_optimal_pct / time_in_critical_pct, "
    "mirrored from `conditions_daily`.",
)
def rollup_daily(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    report = writers.write_merged_level(
        write_context(warehouse), writers.LEVEL_DAILY, partition_window(context)
    )
    return materialize_result(context, report)


@dg.asset(
    partitions_def=partitions.weekly,
    deps=[rollup_daily, raw_readings],
    backfill_policy=BACKFILL,
    group_name="rollups",
    kinds={"postgres"},
    code_version="1",
    description="Per sensor and week (Monday to Sunday, local days): `bi.weekly_sensor_agg` "
    "keyed (sensor_id, week_start). " + _STATS,
)
def rollup_weekly(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    report = writers.write_merged_level(
        write_context(warehouse), writers.LEVEL_WEEKLY, partition_window(context)
    )
    return materialize_result(context, report)
