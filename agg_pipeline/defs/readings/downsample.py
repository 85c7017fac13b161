"""1-minute and 5-minute downsamples: the first level above raw, hourly partitions."""

from datetime import timedelta

import dagster as dg

from agg_pipeline.config.settings import get_settings
from agg_pipeline.defs import partitions
from agg_pipeline.defs.common import (
    BACKFILL,
    materialize_result,
    partition_window,
    sink_windows,
    write_context,
    write_with_retries,
)
from agg_pipeline.defs.readings import checks
from agg_pipeline.defs.readings.raw import raw_readings
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline.warehouse.writes import readings as writers


@dg.asset(
    partitions_def=partitions.hourly,
    deps=[raw_readings],
    backfill_policy=BACKFILL,
    freshness_policy=dg.FreshnessPolicy.time_window(
        fail_window=timedelta(minutes=15), warn_window=timedelta(minutes=5)
    ),
    check_specs=checks.check_specs("readings_1m", coverage=True),
    pool="bi.readings_1m",
    group_name="downsample",
    kinds={"postgres"},
    code_version="1",
)
def readings_1m(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, influx: InfluxResource
) -> dg.MaterializeResult:
    """Per sensor and minute: count, mean, min, max, M2 (spread), first/last reading time.

    Computed inside PostgreSQL in one pass over the partition's raw rows (no raw rows
    travel to Python). NaN, +/-inf, NULL, values outside the field's physical bounds,
    readings stamped in the future and unknown fields are excluded and counted by reason;
    duplicate (time, device, field) readings count once. A (device, field) seen for the
    first time is registered in iot.devices / iot.sensors. Table: `bi.readings_1m`.
    The same pass writes each sensor-hour's exact median to `bi.hourly_medians`, which
    the hourly rollup uses (no second pass over raw).
    """
    ctx, window = write_context(warehouse, influx), partition_window(context)
    report = write_with_retries(context, lambda: writers.write_readings_1m(ctx, window))
    sink_windows(context, warehouse, influx, "1m", report)
    results = list(
        checks.evaluate(warehouse.get_engine(), "readings_1m", window, ctx.settings.timezone)
    )
    with warehouse.get_engine().connect() as conn:
        results.append(
            checks.coverage_result(
                conn,
                "readings_1m",
                "bi.readings_1m",
                "window_start",
                window,
                ctx.catalogue.sample_interval_seconds,
                get_settings().coverage_warn_pct,
            )
        )
    return materialize_result(context, report, warehouse, results)


@dg.asset(
    partitions_def=partitions.hourly,
    deps=[readings_1m],
    backfill_policy=BACKFILL,
    freshness_policy=dg.FreshnessPolicy.time_window(
        fail_window=timedelta(minutes=20), warn_window=timedelta(minutes=10)
    ),
    check_specs=checks.check_specs("readings_5m"),
    pool="bi.readings_5m",
    group_name="downsample",
    kinds={"postgres"},
    code_version="1",
)
def readings_5m(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, influx: InfluxResource
) -> dg.MaterializeResult:
    """Per sensor and 5 minutes: the 1-minute partials merged exactly (Chan's formula).

    Table: `bi.readings_5m`, same columns as `bi.readings_1m`.
    """
    ctx, window = write_context(warehouse, influx), partition_window(context)
    report = write_with_retries(
        context, lambda: writers.write_merged_level(ctx, writers.LEVEL_5M, window)
    )
    sink_windows(context, warehouse, influx, "5m", report)
    results = checks.evaluate(warehouse.get_engine(), "readings_5m", window, ctx.settings.timezone)
    return materialize_result(context, report, warehouse, list(results))
