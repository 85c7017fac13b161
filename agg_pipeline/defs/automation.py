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
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import dagster as dg

from agg_pipeline.core import clock
from agg_pipeline.defs import partitions
from agg_pipeline.defs.assets import (
    dashboard_views,
    device_performance_hourly,
    diagnostic_summary_daily,
    readings_1m,
    readings_5m,
    rollup_hourly,
    rollup_monthly,
    rollup_weekly,
)
from agg_pipeline.defs.loaded import SETTINGS, TIMEZONE
from agg_pipeline.defs.operations.maintenance import retention_cleanup
from agg_pipeline.defs.patterns.assets import EVENT_DETECTORS
from agg_pipeline.defs.readings.raw import observe_late_hours
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse.engine import WarehouseResource

settings = SETTINGS  # definitions-time switches and zone (defs/loaded.py)
TZ = TIMEZONE
RUNNING, STOPPED = dg.DefaultScheduleStatus.RUNNING, dg.DefaultScheduleStatus.STOPPED


def _max_runtime(seconds: int) -> dict[str, str]:
    # Run monitoring (dagster.yaml) cancels runs over this, like the old task time limits.
    return {"dagster/max_runtime": str(seconds)}


# --------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------

readings_1m_job = dg.define_asset_job(
    "refresh_1m_open_hour", selection=[readings_1m], tags=_max_runtime(300)
)
# 1m first, in the same run: a 5-minute window is merged from minutes that are final (a
# separate 1m run at the same tick could still be writing the last minute).
readings_5m_job = dg.define_asset_job(
    "refresh_5m_open_hour", selection=[readings_1m, readings_5m], tags=_max_runtime(600)
)
hourly_rollup_job = dg.define_asset_job(
    "hourly_rollup",
    selection=[readings_1m, readings_5m, rollup_hourly, device_performance_hourly],
    description="Completes an hour at every level: 1m, 5m, hourly rollup, device metrics.",
    tags=_max_runtime(3600),
)
# rollup_daily and conditions_daily share one pass over the day's raw readings: one job,
# with whichever of the two is switched on (the old daily ETL and its
# ETL_CONDITION_CALC_ENABLED flag).
_DAILY_SELECTED = [
    key
    for key, on in (
        ("rollup_daily", settings.schedule_rollup_daily),
        ("conditions_daily", settings.schedule_conditions_daily),
    )
    if on
] or ["rollup_daily", "conditions_daily"]
daily_job = dg.define_asset_job(
    "daily_rollup",
    selection=dg.AssetSelection.assets(*_DAILY_SELECTED, diagnostic_summary_daily),
    tags=_max_runtime(2 * 3600),
)
weekly_rollup_job = dg.define_asset_job(
    "weekly_rollup", selection=[rollup_weekly], tags=_max_runtime(4 * 3600)
)
monthly_rollup_job = dg.define_asset_job(
    "monthly_rollup", selection=[rollup_monthly], tags=_max_runtime(6 * 3600)
)
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
    readings_1m_job,
    readings_5m_job,
    hourly_rollup_job,
    daily_job,
    patterns_job,
    weekly_rollup_job,
    monthly_rollup_job,
    dashboard_refresh_job,
    retention_cleanup,
]

# --------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------

_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _in_flight(instance: dg.DagsterInstance, job_name: str) -> bool:
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job_name, statuses=_IN_FLIGHT), limit=1
    )
    return bool(records)


def settling_hour(when: datetime) -> str:
    """The hour of the minute that just closed: at 11:00 that is 10:00's hour, so the last
    minute (and 5-minute window) of every hour is final one tick after it closes, not at
    the :05 hourly run."""
    return partitions.hourly.get_partition_key_for_timestamp(when.timestamp() - 60)


def previous_hour(when: datetime) -> str:
    return partitions.hourly.get_partition_key_for_timestamp(when.timestamp() - 3600)


def previous_day(when: datetime) -> str:
    return (when.astimezone(settings.zone).date() - timedelta(days=1)).isoformat()


def previous_week(when: datetime) -> str:
    day = when.astimezone(settings.zone).date() - timedelta(days=7)
    return (day - timedelta(days=day.weekday())).isoformat()


def previous_month(when: datetime) -> str:
    first = when.astimezone(settings.zone).date().replace(day=1)
    return (first - timedelta(days=1)).replace(day=1).isoformat()


def partition_schedule(
    name: str,
    cron: str,
    job: dg.JobDefinition | dg.UnresolvedAssetJobDefinition,
    partition_for: Callable[[datetime], str],
    pdef: dg.PartitionsDefinition,
    enabled: bool,
    description: str,
) -> dg.ScheduleDefinition:
    """A schedule that runs ``job`` for one partition chosen from the tick time.

    A tick is skipped while a run of the same job is still queued or running, so a slow
    database never piles up minute-by-minute runs.
    """

    @dg.schedule(
        name=name,
        cron_schedule=cron,
        job=job,
        execution_timezone=TZ,
        default_status=RUNNING if enabled else STOPPED,
        description=description,
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.SkipReason | dg.RunRequest:
        when = context.scheduled_execution_time or datetime.now(UTC)
        key = partition_for(when)
        if not pdef.has_partition_key(key):
            return dg.SkipReason(f"partition {key} is outside the partitions (start date?)")
        if _in_flight(context.instance, job.name):
            return dg.SkipReason(f"a {job.name} run is still in flight; not piling up")
        return dg.RunRequest(run_key=f"{key}@{when.isoformat()}", partition_key=key)

    return _schedule


SCHEDULES = [
    partition_schedule(
        "readings_1m_every_minute",
        "* * * * *",
        readings_1m_job,
        settling_hour,
        partitions.hourly,
        settings.schedule_readings_1m,
        "readings_1m for the hour of the minute that just closed, every minute (the old "
        "aggregate_1m_* Flux tasks). Switch: AGG_PIPELINE_SCHEDULE_READINGS_1M.",
    ),
    partition_schedule(
        "readings_5m_every_5_minutes",
        "*/5 * * * *",
        readings_5m_job,
        settling_hour,
        partitions.hourly,
        settings.schedule_readings_5m,
        "readings_1m + readings_5m for the hour of the window that just closed, every 5 "
        "minutes (the old aggregate_5m_* Flux tasks). Switch: AGG_PIPELINE_SCHEDULE_READINGS_5M.",
    ),
    partition_schedule(
        "rollup_hourly_at_05",
        "5 * * * *",
        hourly_rollup_job,
        previous_hour,
        partitions.hourly,
        settings.schedule_rollup_hourly,
        "At :05, the previous hour at every level (the old hourly_rollup). "
        "Switch: AGG_PIPELINE_SCHEDULE_ROLLUP_HOURLY.",
    ),
    partition_schedule(
        "daily_at_0130",
        "30 1 * * *",
        daily_job,
        previous_day,
        partitions.daily,
        settings.schedule_rollup_daily or settings.schedule_conditions_daily,
        "At 01:30, the previous day's rollup and condition percentages, in one pass (the "
        "old daily_rollup / daily ETL). Switches: AGG_PIPELINE_SCHEDULE_ROLLUP_DAILY, "
        "AGG_PIPELINE_SCHEDULE_CONDITIONS_DAILY.",
    ),
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
    partition_schedule(
        "rollup_weekly_monday_0200",
        "0 2 * * 1",
        weekly_rollup_job,
        previous_week,
        partitions.weekly,
        settings.schedule_rollup_weekly,
        "Monday 02:00, the previous week (the old weekly_rollup). "
        "Switch: AGG_PIPELINE_SCHEDULE_ROLLUP_WEEKLY.",
    ),
    partition_schedule(
        "rollup_monthly_first_0330",
        "30 3 1 * *",
        monthly_rollup_job,
        previous_month,
        partitions.monthly,
        settings.schedule_rollup_monthly,
        "On the 1st at 03:30, the previous local month (after the 01:30 daily rollup of "
        "its last day). Switch: AGG_PIPELINE_SCHEDULE_ROLLUP_MONTHLY.",
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


def _when_complete(
    pdef: dg.TimeWindowPartitionsDefinition, checks: list[dg.AssetChecksDefinition]
) -> list[dg.AssetChecksDefinition]:
    """``checks``, if ``pdef`` has a complete partition when the definitions load.

    Dagster 1.13's partition freshness check fails its run ("Expected non-None value")
    while its asset has no complete partition yet: a start date in the current week or
    month (as `make dev`'s, at the demo's first day) would show a failed run every minute.
    The check joins at the next load of the code location after the first one completes.
    """
    return checks if pdef.get_last_partition_key() is not None else []


FRESHNESS_CHECKS = [
    *dg.build_time_partition_freshness_checks(
        assets=[rollup_hourly], deadline_cron="30 * * * *", timezone=TZ
    ),
    *dg.build_time_partition_freshness_checks(
        assets=[dg.AssetKey("rollup_daily"), dg.AssetKey("conditions_daily")],
        deadline_cron="30 2 * * *",
        timezone=TZ,
        severity=dg.AssetCheckSeverity.ERROR,
    ),
    *_when_complete(
        partitions.weekly,
        dg.build_time_partition_freshness_checks(
            assets=[rollup_weekly],
            deadline_cron="0 4 * * 1",
            timezone=TZ,
            severity=dg.AssetCheckSeverity.ERROR,
        ),
    ),
    *_when_complete(
        partitions.monthly,
        dg.build_time_partition_freshness_checks(
            assets=[rollup_monthly],
            deadline_cron="0 6 1 * *",
            timezone=TZ,
            severity=dg.AssetCheckSeverity.ERROR,
        ),
    ),
]
freshness_checks_sensor = dg.build_sensor_for_freshness_checks(
    freshness_checks=FRESHNESS_CHECKS,
    default_status=SENSOR_RUNNING,
    minimum_interval_seconds=60,
)

from agg_pipeline.defs.events.levels import HEALING_JOBS  # noqa: E402
from agg_pipeline.defs.operations import self_healing  # noqa: E402

self_healing_sensor = self_healing.build_sensor(
    {
        "hourly": (
            hourly_rollup_job,
            ["readings_1m", "readings_5m", "rollup_hourly", "device_performance_hourly"],
        ),
        "daily": (daily_job, _DAILY_SELECTED),
        "diagnostics": (daily_job, ["diagnostic_summary_daily"]),
        "patterns": (
            patterns_job,
            [f"pattern_{n}_daily" for n in (*EVENT_DETECTORS, "anomaly")],
        ),
        "weekly": (weekly_rollup_job, ["rollup_weekly"]),
        "monthly": (monthly_rollup_job, ["rollup_monthly"]),
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
