"""Dagster assets, one module per family."""

from agg_pipeline.assets.daily import daily_rollup_and_conditions
from agg_pipeline.assets.downsample import readings_1m, readings_5m
from agg_pipeline.assets.maintenance import dashboard_views
from agg_pipeline.assets.raw import raw_readings
from agg_pipeline.assets.rollups import rollup_hourly, rollup_weekly

ALL_ASSETS = [
    raw_readings,
    readings_1m,
    readings_5m,
    rollup_hourly,
    daily_rollup_and_conditions,
    rollup_weekly,
    dashboard_views,
]
