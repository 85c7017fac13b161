"""Per-device assets: derived hourly metrics (scores) and the daily diagnostics summary."""

from datetime import timedelta

import dagster as dg

from agg_pipeline.config.catalogue import get_catalogue
from agg_pipeline.config.settings import get_settings
from agg_pipeline.defs import partitions
from agg_pipeline.defs.common import (
    BACKFILL,
    materialize_result,
    partition_window,
    write_context,
    write_with_retries,
)
from agg_pipeline.defs.readings.downsample import readings_1m
from agg_pipeline.defs.readings.rollups import rollup_hourly
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline.warehouse.writes import devices as writers_devices

_catalogue = get_catalogue()
_metrics = (
    "; ".join(f"`{n}` ({m.unit}): {m.formula}" for n, m in _catalogue.derived.items())
    or "none defined in this catalogue"
)

raw_diagnostics = dg.AssetSpec(
    key="raw_diagnostics",
    description="Diagnoses written by the devices' diagnostic engine: `raw.diagnostics` "
    "(time, device, diagnosis_type, severity, confidence 0-1, details jsonb).",
    partitions_def=partitions.daily,
    group_name="sources",
    kinds={"postgres"},
)


@dg.asset(
    partitions_def=partitions.hourly,
    deps=[rollup_hourly, readings_1m],
    backfill_policy=BACKFILL,
    freshness_policy=dg.FreshnessPolicy.time_window(
        fail_window=timedelta(hours=2), warn_window=timedelta(minutes=75)
    ),
    check_specs=[
        dg.AssetCheckSpec(
            "scores_within_bounds",
            asset="device_performance_hourly",
            description="Every derived metric within its declared [min, max] (catalogue).",
        )
    ],
    pool="bi.device_metrics_hourly",
    group_name="devices",
    kinds={"postgres"},
    code_version="1",
    description="Per device and hour, the catalogue's derived metrics, computed in SQL from "
    "the device's hourly rollups (anomalies from its 1-minute windows): "
    f"`bi.device_metrics_hourly` (device_id, hour_start, metric, value). Metrics: {_metrics}.",
)
def device_performance_hourly(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    ctx, window = write_context(warehouse), partition_window(context)
    report = write_with_retries(
        context, lambda: writers_devices.write_device_performance(ctx, window)
    )
    with warehouse.get_engine().connect() as conn:
        outside = writers_devices.metrics_out_of_bounds(conn, window)
    check = dg.AssetCheckResult(
        check_name="scores_within_bounds",
        passed=not outside,
        metadata={"values_outside_bounds": outside},
    )
    return materialize_result(context, report, warehouse, [check])


@dg.asset(
    partitions_def=partitions.daily,
    deps=[raw_diagnostics],
    backfill_policy=BACKFILL,
    freshness_policy=dg.FreshnessPolicy.cron(
        deadline_cron="30 2 * * *",
        lower_bound_delta=timedelta(hours=2, minutes=30),
        timezone=get_settings().timezone,
    ),
    pool="bi.diagnostic_summary_daily",
    group_name="devices",
    kinds={"postgres"},
    code_version="1",
)
def diagnostic_summary_daily(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Per device and local day: diagnoses by severity and by diagnosis type (JSONB
    counts), confidence min / avg / max. Rows with an unknown severity
    (AGG_PIPELINE_DIAGNOSTIC_SEVERITIES) or a confidence outside [0, 1] are rejected and
    counted. Table `bi.diagnostic_summary_daily`.
    """
    ctx, window = write_context(warehouse), partition_window(context)
    report = write_with_retries(
        context, lambda: writers_devices.write_diagnostic_summary(ctx, window)
    )
    return materialize_result(context, report, warehouse)
