"""What every family's schedules share: the partition a tick runs, a schedule that never
piles up runs, the run-time limit tag. Each family builds its own schedules with these
(``readings/schedules.py``, ``events/assets.py``); ``automation.py`` assembles them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import dagster as dg

from agg_pipeline.core.hierarchy import Grain
from agg_pipeline.defs import partitions
from agg_pipeline.defs.loaded import SETTINGS, TIMEZONE

settings = SETTINGS  # definitions-time switches and zone (defs/loaded.py)
TZ = TIMEZONE
RUNNING, STOPPED = dg.DefaultScheduleStatus.RUNNING, dg.DefaultScheduleStatus.STOPPED


def max_runtime(seconds: int) -> dict[str, str]:
    # Run monitoring (dagster.yaml) cancels runs over this, like the old task time limits.
    return {"dagster/max_runtime": str(seconds)}


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


# Per grain: the partitions, and the partition a tick at ``when`` runs (the last closed one).
PARTITIONS: dict[Grain, dg.TimeWindowPartitionsDefinition] = {
    Grain.HOURLY: partitions.hourly,
    Grain.DAILY: partitions.daily,
    Grain.WEEKLY: partitions.weekly,
    Grain.MONTHLY: partitions.monthly,
}
PREVIOUS: dict[Grain, Callable[[datetime], str]] = {
    Grain.HOURLY: previous_hour,
    Grain.DAILY: previous_day,
    Grain.WEEKLY: previous_week,
    Grain.MONTHLY: previous_month,
}


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
