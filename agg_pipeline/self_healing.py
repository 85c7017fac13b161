"""``self_healing_sensor``: the Dagster side of ``healing.py`` (what to run, and when).

It reads the instance's queued and running runs (and this sensor's runs that failed in
the last few minutes, as a back-off) and turns the plan into run requests: one run per
grain and contiguous range, partition-range tags for more than one partition.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from agg_pipeline import clock, healing, partitions
from agg_pipeline.assets.raw import observe_late_hours
from agg_pipeline.catalogue import get_catalogue
from agg_pipeline.resources.influx import InfluxResource
from agg_pipeline.resources.warehouse import WarehouseResource
from agg_pipeline.settings import get_settings

NAME = "self_healing_sensor"
REASON_TAG = "agg_pipeline/healing"
RANGE_START, RANGE_END = (
    "dagster/asset_partition_range_start",
    "dagster/asset_partition_range_end",
)
PDEFS = {"hourly": partitions.hourly, "daily": partitions.daily, "weekly": partitions.weekly}
FAILURE_BACKOFF = timedelta(minutes=5)
_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
_WEEKLY_JOBS = {"weekly_rollup"}


def origin():
    return partitions.hourly.start_time_for_partition_key(
        partitions.hourly.get_first_partition_key()
    )


def _run_window(run: dg.DagsterRun) -> healing.InFlight | None:
    tags = run.tags
    first = tags.get(RANGE_START) or tags.get("dagster/partition")
    last = tags.get(RANGE_END) or first
    if not first or not last:
        return None  # not partitioned (views, retention): writes no healed partition
    assets = (
        frozenset(k.to_user_string() for k in run.asset_selection) if run.asset_selection else None
    )
    if len(first) > 10:
        grain = "hourly"
    elif run.job_name in _WEEKLY_JOBS or (
        assets and all(healing.GRAIN_OF.get(a) == "weekly" for a in assets)
    ):
        grain = "weekly"
    else:
        grain = "daily"
    pdef = PDEFS[grain]
    try:
        start = pdef.time_window_for_partition_key(first).start
        end = pdef.time_window_for_partition_key(last).end
    except Exception:  # a key of another definition: assume the widest, a week per key
        return healing.InFlight(None, _any_start(first), _any_start(last) + timedelta(days=8))
    return healing.InFlight(assets, start, end)


def _any_start(key: str):
    return partitions.daily.time_window_for_partition_key(key[:10]).start


def in_flight(instance: dg.DagsterInstance) -> list[healing.InFlight]:
    """Runs that may still write healed partitions: queued or running (any origin), and
    this sensor's runs that failed recently (so a failing partition is not retried every
    tick)."""
    records = list(instance.get_run_records(filters=dg.RunsFilter(statuses=_IN_FLIGHT)))
    records += instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.FAILURE],
            tags={"dagster/sensor_name": NAME},
            updated_after=clock.now() - FAILURE_BACKOFF,
        )
    )
    return [w for r in records if (w := _run_window(r.dagster_run)) is not None]


def run_request(request: healing.Request) -> dg.RunRequest:
    pdef = PDEFS[request.grain]
    first = pdef.get_partition_key_for_timestamp(request.first.timestamp())
    last = pdef.get_partition_key_for_timestamp(request.last.timestamp())
    tags = {REASON_TAG: ", ".join(request.reasons)}
    keys = [dg.AssetKey(a) for a in request.assets]
    if first == last:
        return dg.RunRequest(asset_selection=keys, partition_key=first, tags=tags)
    return dg.RunRequest(asset_selection=keys, tags={**tags, RANGE_START: first, RANGE_END: last})


def tick(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, influx: InfluxResource
) -> tuple[healing.Plan, list[dg.RunRequest]]:
    """One evaluation: record raw changes, plan, and the run requests."""
    catalogue, settings = get_catalogue(), get_settings()
    observe_late_hours(warehouse, influx)  # raw changes -> raw-hour versions
    probe = None
    if catalogue.raw_in_postgres:
        probe = (catalogue.source.table, catalogue.source.time_column)
    plan = healing.assess(
        warehouse.get_engine(), clock.now(), settings, origin(), in_flight(instance), probe
    )
    return plan, [run_request(r) for r in plan.requests]


_settings = get_settings()


@dg.sensor(
    name=NAME,
    minimum_interval_seconds=30,
    target=dg.AssetSelection.assets(*(n.asset for n in healing.NODES)),
    default_status=dg.DefaultSensorStatus.RUNNING
    if _settings.late_data_sensor
    else dg.DefaultSensorStatus.STOPPED,
    description="Self-healing: every 30 s, finds the partitions in the late-data lookback "
    "whose parents changed after they were computed (data versions in "
    "ops.partition_versions) or that are missing past their schedule, and requests only "
    "those whose parents are current and not in flight - lowest level first, contiguous "
    "partitions in one run. Switch: AGG_PIPELINE_LATE_DATA_SENSOR.",
)
def self_healing_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource, influx: InfluxResource
):
    plan, requests = tick(context.instance, warehouse, influx)
    for r in plan.requests:
        context.log.info(
            f"heal {r.grain} {', '.join(r.assets)}: {r.partitions} partition(s) from "
            f"{r.first.isoformat()} ({', '.join(r.reasons)})"
        )
    if plan.held:
        context.log.info(f"{len(plan.held)} stale partition(s) wait for their parents")
    if not requests:
        return dg.SkipReason(
            f"nothing to heal ({len(plan.held)} stale partition(s) waiting)"
            if plan.held
            else "every partition in the lookback is current"
        )
    return requests
