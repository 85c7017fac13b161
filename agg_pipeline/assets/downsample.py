"""1-minute and 5-minute downsamples: the first level above raw, hourly partitions."""

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
    partitions_def=partitions.hourly,
    deps=[raw_readings],
    backfill_policy=BACKFILL,
    group_name="downsample",
    kinds={"postgres"},
    code_version="1",
)
def readings_1m(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Per sensor and minute: count, mean, min, max, M2 (spread), first/last reading time.

    Computed inside PostgreSQL in one pass over the partition's raw rows (no raw rows
    travel to Python). NaN, +/-inf, NULL, values outside the field's physical bounds,
    readings stamped in the future and unknown fields are excluded and counted by reason;
    duplicate (time, device, field) readings count once. A (device, field) seen for the
    first time is registered in iot.devices / iot.sensors. Table: `bi.readings_1m`.
    """
    report = writers.write_readings_1m(write_context(warehouse), partition_window(context))
    return materialize_result(context, report)


@dg.asset(
    partitions_def=partitions.hourly,
    deps=[readings_1m],
    backfill_policy=BACKFILL,
    group_name="downsample",
    kinds={"postgres"},
    code_version="1",
)
def readings_5m(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Per sensor and 5 minutes: the 1-minute partials merged exactly (Chan's formula).

    Table: `bi.readings_5m`, same columns as `bi.readings_1m`.
    """
    report = writers.write_merged_level(
        write_context(warehouse), writers.LEVEL_5M, partition_window(context)
    )
    return materialize_result(context, report)
