"""Schedules, sensors and jobs: the asset graph runs itself, and says when it cannot.

Each family builds its jobs and schedules beside its assets (``readings/schedules.py``
from the hierarchy, ``patterns/schedules.py``, ``operations/schedules.py``,
``events/assets.py``); this module assembles them with the sensors that span the
families. Schedules replace every old cron (each switchable, like the old feature flags; RUNNING by
default). Late data and catch-up are ``self_healing_sensor``'s job (``healing.py``), from
data versions the writers and the late-data drain record. Freshness is checked per
partition by Dagster's freshness checks; run failures are alerted.
"""

from __future__ import annotations

import json
import os
import urllib.request
from datetime import UTC, datetime

import dagster as dg

from agg_pipeline.defs.operations import schedules as operation_runs
from agg_pipeline.defs.patterns import schedules as pattern_runs
from agg_pipeline.defs.readings import schedules as readings
from agg_pipeline.defs.readings.sensors import late_data_sensor

# The shared schedule helpers, here too (defs/events/assets.py and the tests import them
# from this module).
from agg_pipeline.defs.scheduling import (  # noqa: F401
    RUNNING,
    STOPPED,
    TZ,
    partition_schedule,
    previous_day,
    previous_hour,
    previous_month,
    previous_week,
    settings,
    settling_hour,
)

# --------------------------------------------------------------------------------------
# Jobs and schedules: each family's, beside its assets
# --------------------------------------------------------------------------------------

JOBS = [*readings.JOBS, *pattern_runs.JOBS, *operation_runs.JOBS]
SCHEDULES = [*readings.SCHEDULES, *pattern_runs.SCHEDULES, *operation_runs.SCHEDULES]

# --------------------------------------------------------------------------------------
# Sensors
# --------------------------------------------------------------------------------------

SENSOR_RUNNING = dg.DefaultSensorStatus.RUNNING


automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation_sensor",
    target=dg.AssetSelection.all(),
    default_status=SENSOR_RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the assets' automation conditions (late-data corrections).",
)


def post_alert(url: str, alert: dict, timeout: float = 5.0) -> None:
    request = urllib.request.Request(
        url,
        data=json.dumps(alert).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        response.read(1024)


@dg.run_failure_sensor(
    name="run_failure_alerts",
    default_status=SENSOR_RUNNING,
    description="Logs a structured alert for every failed run and POSTs it as JSON to "
    "ALERT_WEBHOOK_URL when set (5 s timeout; a failed alert never fails the sensor).",
)
def run_failure_alerts(context: dg.RunFailureSensorContext) -> None:
    run = context.dagster_run
    alert = {
        "source": "agg_pipeline",
        "event": "run_failure",
        "job": run.job_name,
        "run_id": run.run_id,
        "partition": run.tags.get("dagster/partition")
        or (
            f"{run.tags.get('dagster/asset_partition_range_start')}..."
            f"{run.tags.get('dagster/asset_partition_range_end')}"
            if run.tags.get("dagster/asset_partition_range_start")
            else None
        ),
        "error": context.failure_event.message,
        "at": datetime.now(UTC).isoformat(),
    }
    context.log.error("ALERT " + json.dumps(alert))
    url = os.environ.get("ALERT_WEBHOOK_URL")
    if not url:
        return
    try:
        post_alert(url, alert)
    except Exception as exc:  # any failure to alert is logged, never raised
        # The URL may carry a token: name the error, not the URL.
        context.log.warning(f"alert webhook failed: {type(exc).__name__}: {exc}"[:300])


FRESHNESS_CHECKS = readings.FRESHNESS_CHECKS
freshness_checks_sensor = dg.build_sensor_for_freshness_checks(
    freshness_checks=FRESHNESS_CHECKS,
    default_status=SENSOR_RUNNING,
    minimum_interval_seconds=60,
)

from agg_pipeline.defs.events.levels import HEALING_JOBS  # noqa: E402
from agg_pipeline.defs.operations import self_healing  # noqa: E402

self_healing_sensor = self_healing.build_sensor(
    {
        **readings.HEALING_JOBS,  # the readings levels by grain, and the diagnostics
        **pattern_runs.HEALING_JOBS,
        **HEALING_JOBS,  # the event rollups: one job per grain (defs/events/levels.py)
    }
)
SENSORS = [
    late_data_sensor,
    self_healing_sensor,
    automation_sensor,
    run_failure_alerts,
    freshness_checks_sensor,
]
