"""Daily time in optimal / critical ranges, per sensor."""

import dagster as dg

from agg_pipeline import partitions, writers
from agg_pipeline.assets._common import (
    BACKFILL,
    materialize_result,
    partition_window,
    write_context,
)
from agg_pipeline.assets.raw import raw_readings
from agg_pipeline.resources.warehouse import WarehouseResource


@dg.asset(
    partitions_def=partitions.daily,
    deps=[raw_readings],
    backfill_policy=BACKFILL,
    group_name="conditions",
    kinds={"postgres"},
    code_version="1",
)
def conditions_daily(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Per sensor and local day, for fields with an optimal range: share of readings and
    of time in the optimal band and beyond the critical bounds, plus coverage.

    Ranges: the widest across crop batches active that day (crop.batches +
    crop.growth_stage_definitions), else the catalogue's default `optimal` range.
    Critical: more than AGG_PIPELINE_CRITICAL_MARGIN_PCT (20 %) beyond a bound.
    Time-weighted: each reading holds until the next, at most AGG_PIPELINE_MAX_GAP_SECONDS.
    Table `bi.daily_sensor_conditions`; the time-weighted shares are mirrored into
    `bi.daily_sensor_agg.time_in_optimal_pct / time_in_critical_pct`.
    """
    report = writers.write_conditions_daily(write_context(warehouse), partition_window(context))
    return materialize_result(context, report)
