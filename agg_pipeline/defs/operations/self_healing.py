"""``self_healing_sensor``: the Dagster side of ``healing.py`` (what to run, and when).

It reads the instance's queued and running runs (and this sensor's runs that failed in
the last few minutes, as a back-off) and turns the plan into run requests: one run per
grain and contiguous range, partition-range tags for more than one partition.

The assets carry no automation condition: the late-data conditions once used here
(``any_deps_updated().since_last_handled()``) lost a trigger when one tick requested an
hour and its day together, and two mechanisms deciding the same corrections would race.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import dagster as dg

from agg_pipeline.config.catalogue import get_catalogue
from agg_pipeline.config.settings import get_settings
from agg_pipeline.core import clock
from agg_pipeline.defs import partitions
from agg_pipeline.defs.events import levels as event_levels
from agg_pipeline.defs.readings.raw import observe_late_hours
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse import healing, late_data
from agg_pipeline.warehouse.engine import WarehouseResource

NAME = "self_healing_sensor"
REASON_TAG = "agg_pipeline/healing"
RANGE_START, RANGE_END = (
    "dagster/asset_partition_range_start",
    "dagster/asset_partition_range_end",
)
PDEFS = {
    "hourly": partitions.hourly,
    "daily": partitions.daily,
    "weekly": partitions.weekly,
    "monthly": partitions.monthly,
}
GRAPH = event_levels.HEALING_GRAPH  # every healed asset, the event rollups' included
FAILURE_BACKOFF = timedelta(minutes=5)
_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def origin() -> datetime:
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
    grains = {GRAPH.grain_of.get(a) for a in assets} if assets else set()
    if len(first) > 10:
        grain = "hourly"
    elif run.job_name in _JOB_GRAIN:  # a job of one grain: every scheduled / healing job
        grain = _JOB_GRAIN[run.job_name]
    elif len(grains) == 1 and None not in grains:  # e.g. assets materialized from the UI
        grain = next(iter(grains))
    else:
        grain = "daily"
    pdef = PDEFS[grain]
    try:
        start = pdef.time_window_for_partition_key(first).start
        end = pdef.time_window_for_partition_key(last).end
    except Exception:  # a key of another definition: assume the widest, a week per key
        return healing.InFlight(None, _any_start(first), _any_start(last) + timedelta(days=8))
    return healing.InFlight(assets, start, end)


def _any_start(key: str) -> datetime:
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


# The job that runs each grain's healing runs (a subset of its assets), by grain; set by
# ``build_sensor``. A run of one job has one partitions definition.
JOBS: dict[str, tuple[str, frozenset[str]]] = {}
_JOB_GRAIN: dict[str, str] = {}  # jobs of one grain only (set by ``build_sensor``)


def run_request(request: healing.Request) -> dg.RunRequest | None:
    pdef = PDEFS[request.grain]
    first = pdef.get_partition_key_for_timestamp(request.first.timestamp())
    last = pdef.get_partition_key_for_timestamp(request.last.timestamp())
    tags = {REASON_TAG: ", ".join(request.reasons)}
    job_name, in_job = JOBS.get(request.group or request.grain, (None, frozenset(request.assets)))
    keys = [dg.AssetKey(a) for a in request.assets if a in in_job]
    if not keys:  # e.g. a level whose feature switch took it out of its job
        return None
    if first == last:
        return dg.RunRequest(
            job_name=job_name, asset_selection=keys, partition_key=first, tags=tags
        )
    return dg.RunRequest(
        job_name=job_name,
        asset_selection=keys,
        tags={**tags, RANGE_START: first, RANGE_END: last},
    )


def tick(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, influx: InfluxResource
) -> tuple[healing.Plan, list[dg.RunRequest]]:
    """One evaluation: record raw changes, plan, and the run requests."""
    catalogue, settings = get_catalogue(), get_settings()
    engine, now = warehouse.get_engine(), clock.now()
    observe_late_hours(warehouse, influx)  # raw changes -> raw-hour versions
    late_data.drain_sources(engine, origin())  # events / diagnostics -> source-hour versions
    tables = {a: (t, "time") for a, t in late_data.SOURCE_TABLES.items()}
    tables.update(event_levels.SOURCE_TABLES)  # the events catalogue's (own time column)
    probes = [(a, t, c) for a, (t, c) in tables.items()]
    raw = None
    if catalogue.raw_in_postgres:
        raw = (catalogue.source.table, catalogue.source.time_column)
        probes.insert(0, (healing.RAW, *raw))
    healing.scan(engine, now, settings, origin(), raw)  # mismatches -> flagged stale
    plan = healing.assess(engine, now, settings, origin(), GRAPH, in_flight(instance), probes)
    return plan, [rr for r in plan.requests if (rr := run_request(r)) is not None]


def build_sensor(jobs: dict[str, tuple[object, Sequence[str]]]) -> dg.SensorDefinition:
    """The sensor, running each run group's healing through its job (asset jobs:
    ``{group: (job, the asset names it selects)}``, groups as in ``healing.GROUPS``)."""
    JOBS.clear()
    JOBS.update({g: (job.name, frozenset(names)) for g, (job, names) in jobs.items()})
    _JOB_GRAIN.clear()
    by_job: dict[str, set[str]] = {}
    for g, (job, _) in jobs.items():
        by_job.setdefault(job.name, set()).add(healing.GROUP_GRAIN.get(g, g))
    _JOB_GRAIN.update({j: next(iter(gs)) for j, gs in by_job.items() if len(gs) == 1})
    settings = get_settings()
    return dg.sensor(
        name=NAME,
        minimum_interval_seconds=settings.healing_interval_seconds,
        jobs=list({job.name: job for job, _ in jobs.values()}.values()),
        default_status=dg.DefaultSensorStatus.RUNNING
        if settings.late_data_sensor
        else dg.DefaultSensorStatus.STOPPED,
        description=DESCRIPTION,
    )(_evaluate)


DESCRIPTION = (
    "Self-healing: every AGG_PIPELINE_HEALING_INTERVAL_SECONDS (default 30 s), finds the "
    "partitions in the late-data lookback "
    "whose parents changed after they were computed (data versions in "
    "ops.partition_versions) or that are missing past their schedule, and requests only "
    "those whose parents are current and not in flight - lowest level first, contiguous "
    "partitions in one run. Switch: AGG_PIPELINE_LATE_DATA_SENSOR."
)


def _evaluate(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource, influx: InfluxResource
) -> dg.SkipReason | list[dg.RunRequest]:
    plan, requests = tick(context.instance, warehouse, influx)
    for r in plan.requests:
        context.log.info(
            f"heal {r.grain} {', '.join(r.assets)}: {r.partitions} partition(s) from "
            f"{r.first.isoformat()} ({', '.join(r.reasons)})"
        )
    if plan.held:
        context.log.info(f"{len(plan.held)} stale partition(s) wait for their parents")
    for s in plan.held:
        if s.reason.startswith((healing.HELD_BY_CHECK, healing.STUCK)):
            context.log.warning(f"held {s.asset} {s.start.isoformat()}: {s.reason}")
    if not requests:
        return dg.SkipReason(
            f"nothing to heal ({len(plan.held)} stale partition(s) waiting)"
            if plan.held
            else "every partition in the lookback is current"
        )
    return requests
