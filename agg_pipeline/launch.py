"""The old ``run_etl.py`` commands over the Dagster instance (``agg-pipeline run``,
``POST /api/etl/run``) and the Dagster side of ``GET /api/etl/status``.

A command is planned as steps - a backfill of a job's assets over partition keys, or a
run of the retention job - then either submitted to the instance (asset backfills and a
queued run: they appear in the UI and run under the daemon's queue, pools and retries),
executed in this process (``--wait``: one run per step, exit code = success) or only
printed (``--dry-run``: partitions and row estimates, nothing written).

    hourly   the last N complete hours (default 3) of the hourly_rollup job's assets
    daily    the last N complete local days (default 2) of the daily_rollup job's assets
    backfill the last N complete local days (daily_rollup) and every complete hour
             from the first of them on (hourly_rollup)
    cleanup  the retention_cleanup job (retention_days overrides the raw retention)
    full     hourly + daily + cleanup, with their defaults
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dagster as dg
import sqlalchemy as sa
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
from dagster._core.execution.backfill import PartitionBackfill
from dagster._core.origin import JobPythonOrigin
from dagster._core.remote_origin import (
    ManagedGrpcPythonEnvCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.utils import make_new_backfill_id
from dagster._daemon.controller import get_daemon_statuses

from agg_pipeline import status as status_mod
from agg_pipeline.config.catalogue import get_catalogue
from agg_pipeline.config.settings import project_root
from agg_pipeline.serving.api.etl import DagsterSide, PlannedStep, RunAnswer, RunRequest

HOURLY_JOB, DAILY_JOB, CLEANUP_JOB = "hourly_rollup", "daily_rollup", "retention_cleanup"
DEFAULT_HOURS, DEFAULT_DAYS = 3, 2
# workspace.yaml's code location: the daemon launches queued runs from it by this name.
LOCATION = "agg_pipeline"
DEFINITIONS_MODULE = "agg_pipeline.definitions"
COMMAND_TAG = "agg_pipeline/command"
# The scheduler counts as running when it beat within this long (it beats every 30 s;
# Dagster's own default tolerance, 30 minutes, would report a dead daemon for half an hour).
HEARTBEAT_TOLERANCE_SECONDS = 120


class LaunchError(ValueError):
    """A command cannot be planned or launched; the message says why."""


@dataclass
class Step:
    kind: str  # "backfill" (assets over partitions) | "run" (a job, unpartitioned)
    job: str
    assets: list[dg.AssetKey]
    partitions: list[str] = field(default_factory=list)
    run_config: dict = field(default_factory=dict)
    estimated_rows: int | None = None
    id: str | None = None

    def planned(self) -> PlannedStep:
        return PlannedStep(
            kind=self.kind,  # type: ignore[arg-type]
            target=self.job,
            assets=[k.to_user_string() for k in self.assets],
            partitions=self.partitions,
            estimated_rows=self.estimated_rows,
            id=self.id,
        )


def _job_assets(defs: dg.Definitions, job: str) -> list[dg.AssetKey]:
    job_def = defs.resolve_job_def(job)
    return sorted(job_def.asset_layer.executable_asset_keys, key=lambda k: k.to_user_string())


def _complete_keys(pdef: dg.TimeWindowPartitionsDefinition, count: int, now: datetime) -> list[str]:
    """The last ``count`` partition keys whose windows ended by ``now`` (oldest first)."""
    keys = [
        k
        for k in pdef.get_partition_keys(current_time=now)
        if pdef.time_window_for_partition_key(k).end <= now
    ]
    return keys[-count:]


def _complete_keys_since(
    pdef: dg.TimeWindowPartitionsDefinition, since: datetime, now: datetime
) -> list[str]:
    """Keys of the partitions starting at or after ``since`` that ended by ``now``."""
    return [
        k
        for k in pdef.get_partition_keys(current_time=now)
        if pdef.time_window_for_partition_key(k).start >= since
        and pdef.time_window_for_partition_key(k).end <= now
    ]


def _partitioned(
    defs: dg.Definitions, job: str
) -> tuple[list[dg.AssetKey], dg.TimeWindowPartitionsDefinition]:
    assets = _job_assets(defs, job)
    pdef = defs.resolve_job_def(job).partitions_def
    if not isinstance(pdef, dg.TimeWindowPartitionsDefinition):
        raise LaunchError(f"job {job} is not time-partitioned")
    return assets, pdef


def plan(defs: dg.Definitions, request: RunRequest, now: datetime | None = None) -> list[Step]:
    now = now or datetime.now(UTC)
    cmd = request.command
    steps: list[Step] = []
    if cmd in ("hourly", "full"):
        assets, pdef = _partitioned(defs, HOURLY_JOB)
        hours = request.hours or DEFAULT_HOURS
        steps.append(Step("backfill", HOURLY_JOB, assets, _complete_keys(pdef, hours, now)))
    if cmd in ("daily", "full"):
        assets, pdef = _partitioned(defs, DAILY_JOB)
        days = request.days or DEFAULT_DAYS
        steps.append(Step("backfill", DAILY_JOB, assets, _complete_keys(pdef, days, now)))
    if cmd == "backfill":
        # The last N complete local days, and every complete hour from the first of them on
        # (today's too).
        if request.days is None:
            raise LaunchError("backfill needs days (how many days back)")
        daily_assets, daily_pdef = _partitioned(defs, DAILY_JOB)
        days = _complete_keys(daily_pdef, request.days, now)
        if not days:
            raise LaunchError(f"{DAILY_JOB}: no complete day before {now:%Y-%m-%d %H:%M}")
        since = daily_pdef.time_window_for_partition_key(days[0]).start
        hourly_assets, hourly_pdef = _partitioned(defs, HOURLY_JOB)
        hours = _complete_keys_since(hourly_pdef, since, now)
        steps.append(Step("backfill", HOURLY_JOB, hourly_assets, hours))
        steps.append(Step("backfill", DAILY_JOB, daily_assets, days))
    if cmd in ("cleanup", "full"):
        config: dict = {"dry_run": request.dry_run}
        if request.retention_days is not None:
            config["retention_days"] = request.retention_days
        steps.append(
            Step(
                "run",
                CLEANUP_JOB,
                [],
                run_config={"ops": {"retention_cleanup_op": {"config": config}}},
            )
        )
    for step in steps:
        if step.kind == "backfill" and not step.partitions:
            raise LaunchError(f"{step.job}: no complete partition in the requested window")
    return steps


def estimate(engine: sa.Engine, steps: list[Step]) -> None:
    """Rows each backfill step would write per asset table: registered sensors x
    partitions (an upper bound: a sensor without readings in a window writes no row)."""
    with engine.connect() as conn:
        sensors = conn.execute(sa.text("SELECT count(*) FROM iot.sensors")).scalar_one()
    for step in steps:
        if step.kind == "backfill":
            step.estimated_rows = sensors * len(step.partitions)


def _origins(job: str) -> tuple[RemoteJobOrigin, JobPythonOrigin]:
    """Where the daemon finds ``job`` (workspace.yaml's location, by name) and how a run
    worker loads it (the module's ``defs``), as `dagster dev -w workspace.yaml` records."""
    root = project_root()
    workdir = str(root) if root else os.getcwd()
    location = ManagedGrpcPythonEnvCodeLocationOrigin(
        loadable_target_origin=LoadableTargetOrigin(
            executable_path=sys.executable,
            module_name=DEFINITIONS_MODULE,
            working_directory=workdir,
        ),
        location_name=LOCATION,
    )
    remote = RemoteJobOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job)
    repo = ReconstructableRepository.for_module(DEFINITIONS_MODULE, "defs", workdir)
    return remote, repo.get_reconstructable_job(job).get_python_origin()


def submit(
    defs: dg.Definitions, instance: dg.DagsterInstance, steps: list[Step], command: str
) -> None:
    """Hand each step to the instance: a backfill (the daemon's backfill loop) or a queued
    run (the run queue); sets each step's id."""
    if not isinstance(instance.run_coordinator, QueuedRunCoordinator):
        raise LaunchError(
            "the Dagster instance does not queue runs (no QueuedRunCoordinator): run with --wait"
        )
    graph = defs.resolve_asset_graph()
    tags = {COMMAND_TAG: command}
    for step in steps:
        if step.kind == "backfill":
            backfill = PartitionBackfill.from_asset_partitions(
                backfill_id=make_new_backfill_id(),
                asset_graph=graph,
                partition_names=step.partitions,
                asset_selection=step.assets,
                backfill_timestamp=time.time(),
                tags=tags,
                dynamic_partitions_store=instance,
                all_partitions=False,
                title=f"agg-pipeline run {command}: {step.job}",
                description=f"{len(step.partitions)} partition(s) {step.partitions[0]} .. "
                f"{step.partitions[-1]}",
                run_config=None,
            )
            instance.add_backfill(backfill)
            step.id = backfill.backfill_id
        else:
            job_def = defs.resolve_job_def(step.job)
            remote, python = _origins(step.job)
            run = instance.create_run_for_job(
                job_def,
                run_config=step.run_config,
                tags=tags,
                status=dg.DagsterRunStatus.NOT_STARTED,
                remote_job_origin=remote,
                job_code_origin=python,
            )
            instance.submit_run(run.run_id, workspace=None)  # type: ignore[arg-type]
            step.id = run.run_id


def execute(
    defs: dg.Definitions, instance: dg.DagsterInstance, steps: list[Step], command: str
) -> bool:
    """Run each step here, one run per step (a partition range in one run: the assets'
    single-run backfill policy); True when every run succeeded."""
    ok = True
    for step in steps:
        job_def = defs.resolve_job_def(step.job)
        tags = {COMMAND_TAG: command}
        if step.kind == "backfill":
            tags |= {
                "dagster/asset_partition_range_start": step.partitions[0],
                "dagster/asset_partition_range_end": step.partitions[-1],
            }
        result = job_def.execute_in_process(
            run_config=step.run_config or None, instance=instance, tags=tags, raise_on_error=False
        )
        step.id = result.run_id
        ok = ok and result.success
    return ok


def _influx_connected() -> bool | None:
    """The same finding as `agg-pipeline status`: None when the catalogue uses no InfluxDB,
    else whether its /health answers within 2 s (never raises)."""
    try:
        catalogue = get_catalogue()
    except Exception:  # a broken catalogue is status' finding to report, not this field's
        return None
    return status_mod.influx_connection(catalogue)[0]


class InstanceBackend:
    """``serving.api.etl.EtlBackend`` over a Dagster instance and the definitions."""

    def __init__(
        self,
        defs: dg.Definitions,
        instance: dg.DagsterInstance | None,
        engine: sa.Engine,
        warehouse_label: str,
    ) -> None:
        self.defs, self.instance, self.engine = defs, instance, engine
        self.warehouse_label = warehouse_label

    def dagster_side(self) -> DagsterSide:
        if self.instance is None:
            return DagsterSide(
                dagster_reachable=False,
                scheduler_running=None,
                influx_connected=_influx_connected(),
                problems=["Dagster instance unavailable (set DAGSTER_HOME)"],
            )
        found = status_mod.collect(self.defs, self.instance, self.engine, self.warehouse_label)
        try:
            heartbeat = get_daemon_statuses(
                self.instance,
                ["SCHEDULER"],
                ignore_errors=True,
                heartbeat_tolerance_seconds=HEARTBEAT_TOLERANCE_SECONDS,
            )
            scheduler = heartbeat["SCHEDULER"].healthy
            reachable = True
        except Exception:  # storage down: status still answers
            scheduler, reachable = None, False
        return DagsterSide(
            dagster_reachable=reachable,
            scheduler_running=scheduler,
            influx_connected=found.influx_connected,  # collect() pinged it once already
            ok=found.ok,
            problems=found.problems,
            stale=[a.asset for a in found.assets if a.freshness == "FAIL"],
            missing={a.asset: a.missing_partitions for a in found.assets if a.missing_partitions},
            failed={a.asset: a.failed_partitions for a in found.assets if a.failed_partitions},
        )

    def run(self, request: RunRequest) -> RunAnswer:
        if self.instance is None:
            raise LaunchError("no Dagster instance (set DAGSTER_HOME)")
        steps = plan(self.defs, request)
        estimate(self.engine, steps)
        if not request.dry_run:
            submit(self.defs, self.instance, steps, request.command)
        return RunAnswer(
            command=request.command,
            dry_run=request.dry_run,
            backfill_ids=[s.id for s in steps if s.kind == "backfill" and s.id],
            run_ids=[s.id for s in steps if s.kind == "run" and s.id],
            steps=[s.planned() for s in steps],
        )
