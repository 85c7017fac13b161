"""Schedules, sensors and jobs: the asset graph runs itself, and says when it cannot.

Schedules replace every old cron (each switchable, like the old feature flags; RUNNING by
default). Late data and catch-up are ``self_healing_sensor``'s job (``healing.py``), from
data versions the writers and the late-data drain record. Freshness is checked per
partition by Dagster's freshness checks; run failures are alerted.
"""

from __future__ import annotations

import json
import os
import urllib.request
from datetime import UTC, datetime, timedelta

import dagster as dg

from agg_pipeline.core import clock
from agg_pipeline.defs import partitions
from agg_pipeline.defs.assets import dashboard_views
from agg_pipeline.defs.operations.maintenance import retention_cleanup
from agg_pipeline.defs.patterns.assets import EVENT_DETECTORS
from agg_pipeline.defs.readings import schedules as readings
from agg_pipeline.defs.readings.raw import observe_late_hours

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
from agg_pipeline.defs.scheduling import max_runtime as _max_runtime
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse.engine import WarehouseResource

# --------------------------------------------------------------------------------------
# Jobs (the readings levels' own: defs/readings/schedules.py, from the hierarchy)
# --------------------------------------------------------------------------------------

patterns_job = dg.define_asset_job(
    "daily_patterns",
    selection=dg.AssetSelection.groups("patterns"),
    description="The six pattern detectors for a day (anomaly after time-based).",
    tags=_max_runtime(3600),
)
dashboard_refresh_job = dg.define_asset_job(
    "dashboard_refresh", selection=[dashboard_views], tags=_max_runtime(900)
)

JOBS = [
    *readings.JOBS,
    patterns_job,
    dashboard_refresh_job,
    retention_cleanup,
]

# --------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------

SCHEDULES = [
    *readings.SCHEDULES,
    partition_schedule(
        "patterns_at_0145",
        "45 1 * * *",
        patterns_job,
        previous_day,
        partitions.daily,
        settings.schedule_patterns,
        "At 01:45, the previous day's six pattern aggregates (the old detectors' daily "
        "storage). Switch: AGG_PIPELINE_SCHEDULE_PATTERNS.",
    ),
    dg.ScheduleDefinition(
        name="dashboard_views_every_15_minutes",
        cron_schedule="*/15 * * * *",
        job=dashboard_refresh_job,
        execution_timezone=TZ,
        default_status=RUNNING if settings.schedule_dashboard_refresh else STOPPED,
        description="Refresh the dashboard materialized views (the old "
        "refresh_materialized_views). Switch: AGG_PIPELINE_SCHEDULE_DASHBOARD_REFRESH.",
    ),
    dg.ScheduleDefinition(
        name="retention_cleanup_at_0300",
        cron_schedule="0 3 * * *",
        job=retention_cleanup,
        execution_timezone=TZ,
        default_status=RUNNING if settings.schedule_retention else STOPPED,
        description="Daily retention cleanup (the old cleanup_old_data). "
        "Switch: AGG_PIPELINE_SCHEDULE_RETENTION.",
    ),
]

# --------------------------------------------------------------------------------------
# Sensors
# --------------------------------------------------------------------------------------

SENSOR_RUNNING = dg.DefaultSensorStatus.RUNNING


@dg.sensor(
    name="late_data_sensor",
    minimum_interval_seconds=30,
    default_status=SENSOR_RUNNING if settings.late_data_sensor else dg.DefaultSensorStatus.STOPPED,
    description="Reports an observation of raw_readings for every hour that received late "
    "readings (after the hour settled), with a new data version (lineage in the UI; "
    "self_healing_sensor corrects the partitions). Reads the change log kept by a "
    "trigger: no raw scans. "
    "Switch: AGG_PIPELINE_LATE_DATA_SENSOR.",
)
def late_data_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource, influx: InfluxResource
) -> dg.SensorResult:
    from agg_pipeline.warehouse import late_data

    seq = int(context.cursor or 0)
    observe_late_hours(warehouse, influx)  # record late readings as per-hour late counts
    since = clock.now() - timedelta(days=settings.late_data_lookback_days)
    first = partitions.hourly.start_time_for_partition_key(
        partitions.hourly.get_first_partition_key()
    )
    changed = [
        h
        for h in late_data.changes_since(warehouse.get_engine(), seq, since)
        if h.hour_start >= first
    ]
    if not changed:
        return dg.SensorResult(skip_reason="no late readings", cursor=str(seq))
    events = []
    for hour in changed:
        key = partitions.hourly.get_partition_key_for_timestamp(hour.hour_start.timestamp())
        events.append(
            dg.AssetObservation(
                asset_key="raw_readings",
                partition=key,
                tags={"dagster/data_version": hour.data_version},
                metadata={
                    "late_rows_total": hour.late_rows,
                    "last_late_arrival": hour.last_late_at.isoformat(),
                },
            )
        )
        context.log.info(f"late readings in {key}: {hour.late_rows} in total so far")
    return dg.SensorResult(asset_events=events, cursor=str(max(h.change_seq for h in changed)))


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
        "patterns": (
            patterns_job,
            [f"pattern_{n}_daily" for n in (*EVENT_DETECTORS, "anomaly")],
        ),
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
