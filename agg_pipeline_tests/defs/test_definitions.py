"""The asset graph as a snapshot: an accidental change shows up in review."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg

from agg_pipeline.definitions import defs

EXPECTED_GRAPH = {
    "raw_readings": set(),
    "readings_1m": {"raw_readings"},
    "readings_5m": {"readings_1m"},
    "rollup_hourly": {"readings_1m", "raw_readings"},
    "rollup_daily": {"rollup_hourly", "raw_readings"},
    "rollup_weekly": {"rollup_daily", "raw_readings"},
    "rollup_monthly": {"rollup_daily", "raw_readings"},  # issue 13 §3: added
    "conditions_daily": {"raw_readings"},
    "dashboard_views": {"readings_1m"},
    "raw_diagnostics": set(),
    "device_performance_hourly": {"rollup_hourly", "readings_1m"},
    "diagnostic_summary_daily": {"raw_diagnostics"},
    "raw_events": set(),
    "pattern_time_based_daily": {"raw_events"},
    "pattern_co_occurrence_daily": {"raw_events"},
    "pattern_sequence_daily": {"raw_events"},
    "pattern_room_based_daily": {"raw_events"},
    "pattern_duration_daily": {"raw_events"},
    "pattern_anomaly_daily": {"pattern_time_based_daily"},
    # Event metrics (issue 13): added.
    "raw_executions": set(),
    "raw_user_activity": set(),
    "raw_credit_usage": set(),
    "execution_metrics_hourly": {"raw_executions"},
    "execution_metrics_daily": {"raw_executions"},
    "execution_metrics_weekly": {"raw_executions"},
    "execution_metrics_monthly": {"raw_executions"},
    "user_activity_hourly": {"raw_user_activity"},
    "user_activity_daily": {"raw_user_activity"},
    "credit_consumption_hourly": {"raw_credit_usage"},
    "credit_consumption_daily": {"raw_credit_usage"},
    "credit_consumption_monthly": {"raw_credit_usage"},
    "analytics_views": {
        "execution_metrics_daily",
        "user_activity_daily",
        "credit_consumption_daily",
        "raw_executions",
        "raw_user_activity",
    },
}
SCHEDULES = {
    "readings_1m_every_minute": "* * * * *",
    "readings_5m_every_5_minutes": "*/5 * * * *",
    "rollup_hourly_at_05": "5 * * * *",
    "daily_at_0130": "30 1 * * *",
    "rollup_weekly_monday_0200": "0 2 * * 1",
    "rollup_monthly_first_0330": "30 3 1 * *",  # issue 13 §3: added
    "dashboard_views_every_15_minutes": "*/15 * * * *",
    "retention_cleanup_at_0300": "0 3 * * *",
    "patterns_at_0145": "45 1 * * *",
    # Event metrics (issue 13): added.
    "events_hourly_at_05": "5 * * * *",
    "events_daily_at_0100": "0 1 * * *",
    "events_weekly_monday_0200": "0 2 * * 1",
    "events_monthly_first_0300": "0 3 1 * *",
    "analytics_views_every_15_minutes": "*/15 * * * *",
}
SENSORS = {
    "late_data_sensor",
    "self_healing_sensor",
    "automation_sensor",
    "run_failure_alerts",
    "freshness_checks_sensor",
}
PARTITIONS = {
    "raw_readings": "hourly",
    "readings_1m": "hourly",
    "readings_5m": "hourly",
    "rollup_hourly": "hourly",
    "rollup_daily": "daily",
    "rollup_weekly": "weekly",
    "rollup_monthly": "monthly",  # issue 13 §3: added
    "conditions_daily": "daily",
    "device_performance_hourly": "hourly",
    "diagnostic_summary_daily": "daily",
    # Event metrics (issue 13): added.
    "execution_metrics_hourly": "hourly",
    "execution_metrics_daily": "daily",
    "execution_metrics_weekly": "weekly",
    "execution_metrics_monthly": "monthly",
    "user_activity_hourly": "hourly",
    "user_activity_daily": "daily",
    "credit_consumption_hourly": "hourly",
    "credit_consumption_daily": "daily",
    "credit_consumption_monthly": "monthly",
}


def test_graph_snapshot():
    graph = defs.resolve_asset_graph()
    actual = {
        key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert actual == EXPECTED_GRAPH


def test_partitions_and_backfill_policies():
    graph = defs.resolve_asset_graph()
    for name, grain in PARTITIONS.items():
        node = graph.get(dg.AssetKey(name))
        pdef = node.partitions_def
        assert isinstance(pdef, dg.TimeWindowPartitionsDefinition), name
        assert pdef.timezone == "UTC"
        crons = {"hourly": "0 * * * *", "daily": "0 0 * * *", "weekly": "0 0 * * 1"}
        crons["monthly"] = "0 0 1 * *"
        assert crons[grain] == (pdef.cron_schedule), name
        if name not in ("raw_readings",):
            assert node.backfill_policy == dg.BackfillPolicy.single_run(), name
    hourly = graph.get(dg.AssetKey("readings_1m")).partitions_def
    assert hourly.get_first_partition_key() == "2025-01-01-00:00"


def test_bad_catalogue_fails_definitions_load_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nsample_interval_seconds: 1\nfields: {ph: {sensor_type: P, unit: pH}}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", "import agg_pipeline.definitions"],
        env={"AGG_PIPELINE_CATALOGUE": str(bad), "PATH": ""},
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "fields.ph.min" in proc.stderr and "bad.yaml" in proc.stderr


def test_every_job_resolves():
    # What a code server does on load: a name clash between a job and an op fails here.
    jobs = {j.name for j in defs.get_repository_def().get_all_jobs()}
    assert {"hourly_rollup", "daily_rollup", "weekly_rollup", "retention_cleanup"} <= jobs


def test_schedules_and_sensors_run_by_default():
    repo = defs.get_repository_def()
    assert {s.name: s.cron_schedule for s in repo.schedule_defs} == SCHEDULES
    for schedule in repo.schedule_defs:
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING, schedule.name
        assert schedule.execution_timezone == "UTC"
    assert {s.name for s in repo.sensor_defs} == SENSORS
    for sensor in repo.sensor_defs:
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING, sensor.name


def test_every_materialized_asset_has_freshness_checks_and_automation():
    from agg_pipeline.defs.events.levels import HEALING_GRAPH

    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if key.to_user_string() in ("raw_readings", "raw_diagnostics", "raw_events", *EVENT_RAW):
            continue  # external: observed, not materialized
        assert node.freshness_policy is not None, key
        scheduled_only = key.to_user_string() in ("dashboard_views", "analytics_views")
        # (unpartitioned views: refreshed on their schedules; every partitioned level is healed)
        # Corrections are the self-healing sensor's, for every level it heals (issue 11:
        # automation conditions raced it and lost triggers, so no asset carries one).
        assert node.automation_condition is None, key
        if not scheduled_only and not key.to_user_string().startswith("pattern_"):
            assert key.to_user_string() in HEALING_GRAPH.by_asset, key
    check_keys = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    for asset in ("readings_1m", "readings_5m", "rollup_hourly", "rollup_daily", "rollup_weekly"):
        assert (asset, "stats_valid") in check_keys
    assert ("readings_5m", "matches_readings_1m") in check_keys
    assert ("rollup_hourly", "matches_readings_1m") in check_keys
    assert ("rollup_daily", "matches_hourly_sensor_agg") in check_keys
    assert ("rollup_weekly", "matches_daily_sensor_agg") in check_keys
    assert ("rollup_monthly", "matches_daily_sensor_agg") in check_keys
    # consistent_with_parents: derived from the hierarchy (issue 12), so rollup_monthly
    # carries it too (added deliberately); the 1m / 5m levels do not (open windows).
    consistent = {a for a, n in check_keys if n == "consistent_with_parents"}
    assert consistent == {"rollup_hourly", "rollup_daily", "rollup_weekly", "rollup_monthly"}
    assert ("readings_1m", "coverage") in check_keys
    assert ("conditions_daily", "shares_valid") in check_keys
    # partition-aware freshness checks for the per-partition deadlines
    freshness = {k.asset_key.to_user_string() for k in check_keys_named(check_keys, "fresh")}
    assert {"rollup_hourly", "rollup_daily", "conditions_daily", "rollup_weekly"} <= freshness


EVENT_RAW = ("raw_executions", "raw_user_activity", "raw_credit_usage")


def check_keys_named(keys, fragment):
    return [dg.AssetCheckKey(dg.AssetKey(a), n) for a, n in keys if fragment in n]
