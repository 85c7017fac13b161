"""The readings levels' jobs, schedules, freshness checks and self-healing run groups,
derived from ``core/hierarchy.py``: a new level of an existing grain joins its grain's
job, schedule, freshness deadline and healing group without a line here.

- Per grain one job and one schedule (``GRAIN_RUNS``: names, crons, time limits and
  texts, fixed since the old ETL's tasks): every level of the grain, root first, and the
  grain's companions (assets of other families run in the same pass or the same run).
  The schedule's switch is the switches of its levels (and switched companions).
- A level written for closed windows only (1m, 5m) is also refreshed over the open hour
  by a job and schedule of its own: the level and its closed-window ancestors, in one run
  (a 5-minute window is merged from minutes that are final).
- The partition freshness checks: the grain's levels written once a partition closes
  (not the open-window ones), and the companions that say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from agg_pipeline.core import hierarchy
from agg_pipeline.core.hierarchy import Grain, Level
from agg_pipeline.defs.scheduling import (
    PARTITIONS,
    PREVIOUS,
    TZ,
    max_runtime,
    partition_schedule,
    settings,
    settling_hour,
)


@dataclass(frozen=True)
class Companion:
    """An asset of another family in a grain's job."""

    asset: str
    switch: str | None = None  # Settings switch: its schedule runs it (None: always)
    freshness: bool = False  # carries the grain's partition freshness check
    group: str | None = None  # its own self-healing group (None: the grain's)


@dataclass(frozen=True)
class GrainRun:
    job: str
    max_runtime_s: int
    schedule: str
    cron: str
    description: str  # the schedule's
    freshness_cron: str
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR
    job_description: str | None = None
    companions: tuple[Companion, ...] = ()
    # The job selects only the switched-on members (one pass writes them all: the old
    # daily ETL and its ETL_CONDITION_CALC_ENABLED flag); all of them when none is on.
    subset_by_switch: bool = False


GRAIN_RUNS: dict[Grain, GrainRun] = {
    Grain.HOURLY: GrainRun(
        "hourly_rollup",
        3600,
        "rollup_hourly_at_05",
        "5 * * * *",
        "At :05, the previous hour at every level (the old hourly_rollup). "
        "Switch: AGG_PIPELINE_SCHEDULE_ROLLUP_HOURLY.",
        "30 * * * *",
        severity=dg.AssetCheckSeverity.WARN,
        job_description="Completes an hour at every level: 1m, 5m, hourly rollup, device metrics.",
        companions=(Companion("device_performance_hourly"),),
    ),
    Grain.DAILY: GrainRun(
        "daily_rollup",
        2 * 3600,
        "daily_at_0130",
        "30 1 * * *",
        "At 01:30, the previous day's rollup and condition percentages, in one pass (the "
        "old daily_rollup / daily ETL). Switches: AGG_PIPELINE_SCHEDULE_ROLLUP_DAILY, "
        "AGG_PIPELINE_SCHEDULE_CONDITIONS_DAILY.",
        "30 2 * * *",
        companions=(
            Companion("conditions_daily", "schedule_conditions_daily", freshness=True),
            Companion("diagnostic_summary_daily", group="diagnostics"),
        ),
        subset_by_switch=True,
    ),
    Grain.WEEKLY: GrainRun(
        "weekly_rollup",
        4 * 3600,
        "rollup_weekly_monday_0200",
        "0 2 * * 1",
        "Monday 02:00, the previous week (the old weekly_rollup). "
        "Switch: AGG_PIPELINE_SCHEDULE_ROLLUP_WEEKLY.",
        "0 4 * * 1",
    ),
    Grain.MONTHLY: GrainRun(
        "monthly_rollup",
        6 * 3600,
        "rollup_monthly_first_0330",
        "30 3 1 * *",
        "On the 1st at 03:30, the previous local month (after the 01:30 daily rollup of "
        "its last day). Switch: AGG_PIPELINE_SCHEDULE_ROLLUP_MONTHLY.",
        "0 6 1 * *",
    ),
}

# The open-hour refresh of the closed-window levels: time limit and schedule text, by
# level key (a new such level gets 300 s and a text naming its switch).
_REFRESH_TEXT: dict[str, tuple[int, str]] = {
    "1m": (
        300,
        "readings_1m for the hour of the minute that just closed, every minute (the old "
        "aggregate_1m_* Flux tasks). Switch: AGG_PIPELINE_SCHEDULE_READINGS_1M.",
    ),
    "5m": (
        600,
        "readings_1m + readings_5m for the hour of the window that just closed, every 5 "
        "minutes (the old aggregate_5m_* Flux tasks). Switch: "
        "AGG_PIPELINE_SCHEDULE_READINGS_5M.",
    ),
}


def _switched_on(setting: str | None) -> bool:
    return setting is None or bool(getattr(settings, setting))


def levels_of(grain: Grain) -> list[Level]:
    return [lv for lv in hierarchy.DERIVED if lv.grain is grain]


def open_window_levels() -> list[Level]:
    """The levels refreshed over the open hour (written for closed windows only)."""
    return [lv for lv in hierarchy.DERIVED if lv.closed_windows_only and lv.step is not None]


def refresh_assets(level: Level) -> list[str]:
    """``level`` and its closed-window ancestors, root first: one refresh run."""
    chain = [level]
    while chain[0].parent and hierarchy.parent_of(chain[0]).closed_windows_only:
        chain.insert(0, hierarchy.parent_of(chain[0]))
    return [lv.asset for lv in chain]


def _every(level: Level) -> tuple[str, str]:
    """(schedule name suffix, cron) of a refresh every ``level.step`` minutes."""
    assert level.step is not None
    minutes = int(level.step.total_seconds() // 60)
    if minutes <= 1:
        return "every_minute", "* * * * *"
    return f"every_{minutes}_minutes", f"*/{minutes} * * * *"


def grain_members(grain: Grain) -> list[tuple[str, str | None]]:
    """(asset, switch) of what the grain's run writes in the grain's own healing group."""
    run = GRAIN_RUNS[grain]
    members = [(lv.asset, lv.schedule_setting) for lv in levels_of(grain)]
    members += [(c.asset, c.switch) for c in run.companions if c.group is None]
    return members


def _selected(grain: Grain) -> list[str]:
    """The grain's healing group: every member, or the switched-on ones (see GrainRun)."""
    members = grain_members(grain)
    if not GRAIN_RUNS[grain].subset_by_switch:
        return [a for a, _ in members]
    return [a for a, s in members if _switched_on(s)] or [a for a, _ in members]


def _schedule_switch(grain: Grain) -> bool:
    closed = [lv.schedule_setting for lv in levels_of(grain) if not lv.closed_windows_only]
    switched = [c.switch for c in GRAIN_RUNS[grain].companions if c.switch]
    return any(_switched_on(s) for s in (*closed, *switched))


GRAINS: list[Grain] = [g for g in Grain if levels_of(g)]


def _refresh_runs() -> tuple[
    dict[str, dg.UnresolvedAssetJobDefinition], list[dg.ScheduleDefinition]
]:
    """Per closed-window level: its open-hour job (by level key) and schedule."""
    jobs, schedules = {}, []
    for level in open_window_levels():
        switch = f"AGG_PIPELINE_{(level.schedule_setting or '').upper()}"
        limit, text = _REFRESH_TEXT.get(
            level.key, (300, f"{level.asset} for the open hour. Switch: {switch}.")
        )
        suffix, cron = _every(level)
        jobs[level.key] = job = dg.define_asset_job(
            f"refresh_{level.key}_open_hour",
            selection=dg.AssetSelection.assets(*refresh_assets(level)),
            tags=max_runtime(limit),
        )
        schedules.append(
            partition_schedule(
                f"{level.asset}_{suffix}",
                cron,
                job,
                settling_hour,
                PARTITIONS[Grain.HOURLY],
                _switched_on(level.schedule_setting),
                text,
            )
        )
    return jobs, schedules


def _grain_runs() -> tuple[
    dict[Grain, dg.UnresolvedAssetJobDefinition], list[dg.ScheduleDefinition]
]:
    """Per grain with levels: its job and its schedule (``GRAIN_RUNS``)."""
    jobs, schedules = {}, []
    for grain in GRAINS:
        run = GRAIN_RUNS[grain]
        extras = [c.asset for c in run.companions if c.group is not None]
        jobs[grain] = job = dg.define_asset_job(
            run.job,
            selection=dg.AssetSelection.assets(*_selected(grain), *extras),
            description=run.job_description,
            tags=max_runtime(run.max_runtime_s),
        )
        schedules.append(
            partition_schedule(
                run.schedule,
                run.cron,
                job,
                PREVIOUS[grain],
                PARTITIONS[grain],
                _schedule_switch(grain),
                run.description,
            )
        )
    return jobs, schedules


def _freshness_checks() -> list[dg.AssetChecksDefinition]:
    """Each grain's partition freshness check, once the grain has a complete partition
    when the definitions load: Dagster 1.13's check fails its run ("Expected non-None
    value") while its asset has none yet, so a start date in the current week or month
    (as `make dev`'s, at the demo's first day) would show a failed run every minute. The
    check joins at the next load of the code location after the first one completes."""
    out: list[dg.AssetChecksDefinition] = []
    for grain in GRAINS:
        if PARTITIONS[grain].get_last_partition_key() is None:
            continue
        run = GRAIN_RUNS[grain]
        fresh = [lv.asset for lv in levels_of(grain) if not lv.closed_windows_only]
        fresh += [c.asset for c in run.companions if c.freshness]
        out += dg.build_time_partition_freshness_checks(
            assets=[dg.AssetKey(a) for a in fresh],
            deadline_cron=run.freshness_cron,
            timezone=TZ,
            severity=run.severity,
        )
    return out


REFRESH_JOBS, REFRESH_SCHEDULES = _refresh_runs()
GRAIN_JOBS, GRAIN_SCHEDULES = _grain_runs()
FRESHNESS_CHECKS: list[dg.AssetChecksDefinition] = _freshness_checks()

# The self-healing sensor's run groups of the readings: {group: (job, assets)}.
HEALING_JOBS: dict[str, tuple[dg.UnresolvedAssetJobDefinition, list[str]]] = {
    grain.value: (GRAIN_JOBS[grain], _selected(grain)) for grain in GRAINS
}
HEALING_JOBS.update(
    {
        c.group: (GRAIN_JOBS[grain], [c.asset])
        for grain in GRAINS
        for c in GRAIN_RUNS[grain].companions
        if c.group is not None
    }
)

JOBS: list[dg.UnresolvedAssetJobDefinition] = [*REFRESH_JOBS.values(), *GRAIN_JOBS.values()]
SCHEDULES: list[dg.ScheduleDefinition] = [*REFRESH_SCHEDULES, *GRAIN_SCHEDULES]
