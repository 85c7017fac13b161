"""Dagster assets, one module per family."""

from agg_pipeline.defs.devices.assets import (
    device_performance_hourly,
    diagnostic_summary_daily,
    raw_diagnostics,
)
from agg_pipeline.defs.operations.maintenance import dashboard_views
from agg_pipeline.defs.patterns.assets import pattern_anomaly_daily, pattern_detectors, raw_events
from agg_pipeline.defs.readings.daily import daily_rollup_and_conditions
from agg_pipeline.defs.readings.downsample import readings_1m, readings_5m
from agg_pipeline.defs.readings.raw import raw_readings
from agg_pipeline.defs.readings.rollups import rollup_hourly, rollup_monthly, rollup_weekly

ALL_ASSETS = [
    raw_readings,
    readings_1m,
    readings_5m,
    rollup_hourly,
    daily_rollup_and_conditions,
    rollup_weekly,
    rollup_monthly,
    dashboard_views,
    raw_diagnostics,
    device_performance_hourly,
    diagnostic_summary_daily,
    raw_events,
    pattern_detectors,
    pattern_anomaly_daily,
]
