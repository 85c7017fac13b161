"""`agg-pipeline status`: the truth about freshness, partitions, checks and the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from agg_pipeline import status as status_mod
from agg_pipeline.core.cron import previous_tick
from agg_pipeline.definitions import defs
from agg_pipeline.defs.assets import readings_1m, readings_5m, rollup_hourly
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline_tests import data

REPO = defs.get_repository_def()


@pytest.mark.parametrize(
    ("cron", "before", "tick"),
    [
        ("30 2 * * *", datetime(2026, 11, 23, 2, 29, tzinfo=UTC), datetime(2026, 11, 22, 2, 30)),
        ("30 2 * * *", datetime(2026, 11, 23, 2, 30, tzinfo=UTC), datetime(2026, 11, 23, 2, 30)),
        ("0 4 * * 1", datetime(2026, 11, 29, 23, 0, tzinfo=UTC), datetime(2026, 11, 23, 4, 0)),
        ("*/15 * * * *", datetime(2026, 11, 23, 9, 44, tzinfo=UTC), datetime(2026, 11, 23, 9, 30)),
    ],
)
def test_previous_cron_tick(cron, before, tick):
    assert previous_tick(cron, before).replace(tzinfo=None) == tick


def test_status_reports_fresh_stale_and_failing(warehouse_url, engine, dagster_instance):
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    data.seed(engine, start=hour - timedelta(hours=1), days=4 / 24, devices=1, hz=0.02)
    key = dg.HourlyPartitionsDefinition(
        start_date="2025-01-01-00:00"
    ).get_partition_key_for_timestamp(hour.timestamp())
    resources = {
        "warehouse": WarehouseResource(database_url=warehouse_url),
        "influx": InfluxResource(),
    }
    assert dg.materialize(
        [readings_1m, readings_5m, rollup_hourly],
        instance=dagster_instance,
        resources=resources,
        partition_key=key,
    ).success
    result = status_mod.collect(
        defs, dagster_instance, sa.create_engine(warehouse_url), "test", days=1, now=now
    )
    by_asset = {a.asset: a for a in result.assets}
    fresh = by_asset["readings_1m"]
    assert fresh.freshness == "PASS" and fresh.latest_partition == key
    assert fresh.rows > 0 and fresh.failing_checks == []
    # Other hours of the last day were never materialized: missing; daily assets: stale.
    assert fresh.missing_partitions and key not in fresh.missing_partitions
    assert by_asset["rollup_daily"].freshness == "FAIL"
    assert not result.ok
    assert any("rollup_daily: stale" in p for p in result.problems)
    text = status_mod.render(result)
    assert "PROBLEMS:" in text and "readings_1m" in text


def test_status_command_exits_non_zero_with_json(warehouse_url, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    env = {**os.environ, "DATABASE_URL": warehouse_url, "DAGSTER_HOME": str(home)}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "agg-pipeline"), "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["warehouse_reachable"] is True and report["ok"] is False
    assert {a["asset"] for a in report["assets"]} >= {"readings_1m", "rollup_daily"}
    unreachable = subprocess.run(
        [str(Path(sys.executable).parent / "agg-pipeline"), "status"],
        env={**env, "DATABASE_URL": "postgresql+psycopg2://x:secret@127.0.0.1:1/none"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unreachable.returncode == 1
    assert "UNREACHABLE" in unreachable.stdout and "secret" not in unreachable.stdout


def test_event_levels_are_expected_only_where_there_are_events(engine, dagster_instance):
    now = datetime.now(UTC)

    def collect() -> dict[str, status_mod.AssetStatus]:
        result = status_mod.collect(defs, dagster_instance, engine, "test", days=1, now=now)
        return {a.asset: a for a in result.assets}

    # No events anywhere: nothing to compute, nothing missing, nothing stale.
    empty = collect()
    for asset in ("execution_metrics_hourly", "execution_metrics_daily", "analytics_views",
                  "user_activity_hourly", "credit_consumption_monthly"):  # fmt: skip
        st = empty[asset]
        assert st.missing_partitions == [] and st.freshness == "PASS", (asset, st)
        assert "nothing to compute" in st.freshness_detail
    assert empty["execution_metrics_hourly"].nothing_to_compute  # the day's past hours
    assert empty["readings_1m"].missing_partitions  # the readings' levels: unchanged

    # One execution five hours ago: its hour is due (missing until it runs), the other
    # hours are not; the executions' levels are stale (never run), user activity's not.
    at = now - timedelta(hours=5)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO raw.executions VALUES (1, :t, 'ws', 'u', 'success', 5, 1)"),
            {"t": at},
        )
    later = collect()
    hour_key = at.strftime("%Y-%m-%d-%H:00")
    hourly = later["execution_metrics_hourly"]
    assert hourly.missing_partitions == [hour_key]
    assert hour_key not in hourly.nothing_to_compute and hourly.nothing_to_compute
    assert hourly.freshness == "FAIL" and hourly.rows == 0
    assert later["user_activity_hourly"].missing_partitions == []
    assert later["user_activity_hourly"].freshness == "PASS"
    assert later["analytics_views"].freshness == "FAIL"  # events to show, never refreshed
