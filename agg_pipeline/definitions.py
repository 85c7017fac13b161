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

from agg_pipeline.config.catalogue import get_catalogue  # noqa: E402
from agg_pipeline.config.settings import get_settings  # noqa: E402
from agg_pipeline.defs.assets import ALL_ASSETS  # noqa: E402
from agg_pipeline.defs.automation import FRESHNESS_CHECKS, JOBS, SCHEDULES, SENSORS  # noqa: E402
from agg_pipeline.defs.events.assets import EVENT_ASSETS, EVENT_JOBS, EVENT_SCHEDULES  # noqa: E402
from agg_pipeline.influx.client import InfluxResource  # noqa: E402
from agg_pipeline.warehouse.engine import WarehouseResource  # noqa: E402


def warehouse_resource() -> WarehouseResource:
    settings = get_settings()
    # EnvVar: the URL (and any password in it) is read at run time, never stored in run
    # config or shown in the UI. Unset: the local embedded PostgreSQL.
    url = dg.EnvVar("DATABASE_URL") if os.environ.get("DATABASE_URL") else None
    return WarehouseResource(database_url=url, work_mem=settings.work_mem)


INFLUX_ENV = ("INFLUXDB_URL", "INFLUXDB_TOKEN", "INFLUXDB_ORG")


def influx_resource() -> InfluxResource:
    """InfluxDB from INFLUXDB_URL / _TOKEN / _ORG (EnvVar: read at run time, never shown).

    Without INFLUXDB_URL the resource is unconfigured; a catalogue that reads from or
    writes to InfluxDB then fails here, at load, naming the missing variables.
    """
    catalogue = get_catalogue()
    needs = catalogue.source.kind == "influxdb" or catalogue.influx_sink is not None
    missing = [name for name in INFLUX_ENV if not os.environ.get(name)]
    if not os.environ.get("INFLUXDB_URL"):
        if needs:
            raise dg.DagsterInvalidDefinitionError(
                f"catalogue {catalogue.name!r} uses InfluxDB: set {', '.join(missing)}"
            )
        return InfluxResource()
    if missing:
        raise dg.DagsterInvalidDefinitionError(
            f"INFLUXDB_URL is set but {', '.join(missing)} is not"
        )
    return InfluxResource(
        url=dg.EnvVar("INFLUXDB_URL"),
        token=dg.EnvVar("INFLUXDB_TOKEN"),
        org=dg.EnvVar("INFLUXDB_ORG"),
    )


defs = dg.Definitions(
    assets=[*ALL_ASSETS, *EVENT_ASSETS],
    # Steps run inside the run worker, one after the other: the work happens in
    # PostgreSQL, and a process per step (the multiprocess default) costs ~1.5 s each.
    executor=dg.in_process_executor,
    asset_checks=FRESHNESS_CHECKS,
    jobs=[*JOBS, *EVENT_JOBS],
    schedules=[*SCHEDULES, *EVENT_SCHEDULES],
    sensors=SENSORS,
    resources={"warehouse": warehouse_resource(), "influx": influx_resource()},
)
