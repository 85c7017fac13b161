"""Dagster assets, one module per family."""

from agg_pipeline.assets.conditions import conditions_daily
from agg_pipeline.assets.downsample import readings_1m, readings_5m
from agg_pipeline.assets.maintenance import dashboard_views
from agg_pipeline.assets.raw import raw_readings
from agg_pipeline.assets.rollups import rollup_daily, rollup_hourly, rollup_weekly

ALL_ASSETS = [
    raw_readings,
    readings_1m,
    readings_5m,
    rollup_hourly,
    rollup_daily,
    rollup_weekly,
    conditions_daily,
    dashboard_views,
]
