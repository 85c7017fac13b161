"""Everything a level needs beyond its entry, its migration and its asset is derived
from core/hierarchy.py: every registry level has its jobs, schedules, freshness check,
checks, self-healing group, per-partition figures, consistency queries and raw-release
guard. A new entry that one of these derivations misses fails here.

Pure (no database): the real-database proofs are faults/test_retention.py (the guard)
and warehouse/test_monthly.py (the consistency queries)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import dagster as dg

from agg_pipeline.config.settings import Settings
from agg_pipeline.core import hierarchy
from agg_pipeline.core.hierarchy import Grain
from agg_pipeline.definitions import defs
from agg_pipeline.defs.events.levels import HEALING_GRAPH
from agg_pipeline.defs.operations import self_healing
from agg_pipeline.defs.readings import schedules as readings
from agg_pipeline.warehouse import consistency, figures, levels, retention, statements

RAW_TABLE = retention._Raw("raw.readings", "time", "device", "field", "value")


def _job_assets(job_name: str) -> set[str]:
    job = defs.resolve_job_def(job_name)
    return {k.to_user_string() for k in job.asset_layer.executable_asset_keys}


def test_every_level_has_its_jobs_schedules_and_freshness():
    repo = defs.get_repository_def()
    schedules_by_job: dict[str, list[dg.ScheduleDefinition]] = {}
    for s in repo.schedule_defs:
        schedules_by_job.setdefault(s.job_name, []).append(s)
    graph = defs.resolve_asset_graph()
    fresh = {
        k.asset_key.to_user_string() for k in graph.asset_check_keys if k.name == "freshness_check"
    }
    for level in hierarchy.DERIVED:
        run = readings.GRAIN_RUNS[level.grain]
        # The grain's job writes it, on the grain's schedule.
        assert level.asset in _job_assets(run.job), level.key
        assert [s.name for s in schedules_by_job[run.job]] == [run.schedule], level.key
        if level.closed_windows_only:
            # ...and its open-hour refresh: its own job (with its closed-window ancestors
            # first) and schedule, switched by its own setting.
            job = f"refresh_{level.key}_open_hour"
            assert _job_assets(job) == set(readings.refresh_assets(level)), level.key
            (schedule,) = schedules_by_job[job]
            assert schedule.cron_schedule.endswith("* * * *"), level.key
            assert level.asset not in fresh, level.key
        else:
            assert level.asset in fresh, level.key


def test_every_level_is_healed_by_its_grains_job():
    for level in hierarchy.DERIVED:
        node = HEALING_GRAPH.by_asset[level.asset]
        assert node.parents == hierarchy.upstream_assets(level), level.key
        job, assets = self_healing.JOBS[node.run_group]
        assert level.asset in assets, level.key
        assert job == readings.GRAIN_RUNS[level.grain].job, level.key


def test_every_level_has_its_checks_and_figures():
    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    for level in hierarchy.DERIVED:
        assert (level.asset, "stats_valid") in checks, level.key
        parent = hierarchy.parent_of(level)
        if parent is not hierarchy.RAW:
            assert (level.asset, f"matches_{parent.table.split('.')[1]}") in checks, level.key
            assert any(p.asset == level.asset for p in consistency.PAIRS), level.key
        consistent = (level.asset, "consistent_with_parents") in checks
        assert consistent is (not level.closed_windows_only), level.key
        assert (level in consistency.MEDIAN_LEVELS) is (level.median is not hierarchy.Median.NONE)
        kept = figures.PARTITION_FIGURES[level.table]
        assert kept[0] == level.bucket_column and kept[3] is level.key_is_date


def test_every_level_that_holds_raw_is_waited_for():
    on = Settings(monthly_median=True)
    holders = retention.raw_holders(on)
    sql = retention.verdict_sql(RAW_TABLE, holders)
    for level in hierarchy.DERIVED:
        held = hierarchy.holds_raw(level)
        assert (level in holders) is held, level.key
        assert (statements.quote_ident(level.table) in sql) is held, level.key
    # A median switched off is not waited for (its level is merged from daily alone).
    off = retention.raw_holders(Settings(monthly_median=False))
    assert hierarchy.LEVEL_MONTHLY not in off and hierarchy.LEVEL_WEEKLY in off
    assert "monthly_sensor_agg" not in retention.verdict_sql(RAW_TABLE, off)


def test_a_new_level_is_derived_without_code():
    """A hypothetical 15-minute level over 1m and a second monthly level: the guard, the
    consistency queries and the job selection follow from their entries alone."""
    quarter_hour = replace(
        hierarchy.LEVEL_5M,
        key="15m",
        asset="readings_15m",
        table="bi.readings_15m",
        step=timedelta(minutes=15),
        median=hierarchy.Median.HOURLY_MEDIANS,  # say it carries a median from raw
        closed_windows_only=False,
    )
    months = replace(hierarchy.LEVEL_MONTHLY, key="monthly2", table="bi.monthly2")
    sql = retention.verdict_sql(RAW_TABLE, [quarter_hour, hierarchy.LEVEL_DAILY, months])
    assert "date_bin('15 minutes', bin, :origin)" in sql
    assert "'a 15-minute window has no 15m rollup'" in sql
    assert "date_trunc('month', a.\"metric_date\")::date" in sql and '"bi"."monthly2"' in sql
    pair = consistency._compare(
        consistency._sums(quarter_hour, None),
        consistency._sums(quarter_hour, hierarchy.LEVEL_1M),
    )
    assert "date_bin('1 hour', \"window_start\", :origin)" in pair
    assert "interval '15 minutes'" in consistency.null_medians_sql(
        quarter_hour, ("raw.readings", "time")
    )
    assert levels.bucket_sql(months, "metric_date") == "date_trunc('month', metric_date)::date"
    # Every grain a level can have has its run (GRAIN_RUNS): a new grain is refused here.
    assert set(readings.GRAIN_RUNS) == set(Grain)


def test_a_running_job_is_read_at_its_grain():
    """The healer reads a queued / running run's partitions at its job's grain (no job
    named by hand): a weekly or monthly key is a week or a month, not a day."""
    for grain in readings.GRAINS:
        job = readings.GRAIN_RUNS[grain].job
        assert self_healing._JOB_GRAIN[job] == grain.value, job
    for job, key, days in (
        ("weekly_rollup", "2026-11-02", 7),
        ("monthly_rollup", "2026-11-01", 30),
    ):
        run = dg.DagsterRun(job_name=job, run_id=f"r-{job}", tags={"dagster/partition": key})
        window = self_healing._run_window(run)
        assert window is not None and (window.end - window.start).days == days, job
