"""The one Definitions object of agg_pipeline (workspace.yaml and pyproject point here)."""

from __future__ import annotations

import os

import dagster as dg

from agg_pipeline.assets import ALL_ASSETS
from agg_pipeline.automation import FRESHNESS_CHECKS, JOBS, SCHEDULES, SENSORS
from agg_pipeline.resources.warehouse import WarehouseResource
from agg_pipeline.settings import get_settings


def warehouse_resource() -> WarehouseResource:
    settings = get_settings()
    # EnvVar: the URL (and any password in it) is read at run time, never stored in run
    # config or shown in the UI. Unset: the local embedded PostgreSQL.
    url = dg.EnvVar("DATABASE_URL") if os.environ.get("DATABASE_URL") else None
    return WarehouseResource(database_url=url, work_mem=settings.work_mem)


defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=FRESHNESS_CHECKS,
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources={"warehouse": warehouse_resource()},
)
