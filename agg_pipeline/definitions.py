"""The one Definitions object of agg_pipeline (workspace.yaml and pyproject point here)."""

from __future__ import annotations

import os
import warnings

import dagster as dg

# Chosen on purpose and documented (single-run backfill policies are "beta", freshness
# policies "preview" in Dagster 1.13; the partition-aware freshness checks are
# "superseded" by per-asset FreshnessPolicy, which cannot express a per-partition
# deadline): keep the logs for real problems.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
warnings.filterwarnings("ignore", category=dg.SupersessionWarning)

from agg_pipeline.assets import ALL_ASSETS  # noqa: E402
from agg_pipeline.automation import FRESHNESS_CHECKS, JOBS, SCHEDULES, SENSORS  # noqa: E402
from agg_pipeline.resources.warehouse import WarehouseResource  # noqa: E402
from agg_pipeline.settings import get_settings  # noqa: E402


def warehouse_resource() -> WarehouseResource:
    settings = get_settings()
    # EnvVar: the URL (and any password in it) is read at run time, never stored in run
    # config or shown in the UI. Unset: the local embedded PostgreSQL.
    url = dg.EnvVar("DATABASE_URL") if os.environ.get("DATABASE_URL") else None
    return WarehouseResource(database_url=url, work_mem=settings.work_mem)


defs = dg.Definitions(
    assets=ALL_ASSETS,
    # Steps run inside the run worker, one after the other: the work happens in
    # PostgreSQL, and a process per step (the multiprocess default) costs ~1.5 s each.
    executor=dg.in_process_executor,
    asset_checks=FRESHNESS_CHECKS,
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources={"warehouse": warehouse_resource()},
)
