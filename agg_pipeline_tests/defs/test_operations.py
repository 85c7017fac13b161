"""Schedules, checks, retention, dashboard views and alerts, against real instances."""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import pytest
import sqlalchemy as sa

from agg_pipeline.definitions import defs
from agg_pipeline.defs import automation
from agg_pipeline.defs.assets import (
    daily_rollup_and_conditions,
    dashboard_views,
    readings_1m,
    readings_5m,
    rollup_hourly,
    rollup_weekly,
)
from agg_pipeline.defs.operations.maintenance import retention_cleanup
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline_tests import data
from agg_pipeline_tests.warehouse.test_rollups import run_hours, run_partition

# Resolved once, outside any test instance: the resolved repository remembers the instance
# it was first loaded under.
REPO = defs.get_repository_def()


def schedule(name: str) -> dg.ScheduleDefinition:
    return REPO.get_schedule_def(name)


@pytest.mark.parametrize(
    ("name", "tick", "partition"),
    [
        (
            "readings_1m_every_minute",
            datetime(2026, 11, 20, 10, 37, tzinfo=UTC),
            "2026-11-20-10:00",
        ),
        (
            "readings_5m_every_5_minutes",
            datetime(2026, 11, 20, 10, 35, tzinfo=UTC),
            "2026-11-20-10:00",
        ),
        # At the top of the hour, the hour that just closed: its last minute and last
        # 5-minute window become final now, not at the :05 hourly run.
        (
            "readings_1m_every_minute",
            datetime(2026, 11, 20, 11, 0, tzinfo=UTC),
            "2026-11-20-10:00",
        ),
        (
            "readings_1m_every_minute",
            datetime(2026, 11, 20, 11, 1, tzinfo=UTC),
            "2026-11-20-11:00",
        ),
        (
            "readings_5m_every_5_minutes",
            datetime(2026, 11, 20, 11, 0, tzinfo=UTC),
            "2026-11-20-10:00",
        ),
        ("rollup_hourly_at_05", datetime(2026, 11, 20, 0, 5, tzinfo=UTC), "2026-11-19-23:00"),
        ("daily_at_0130", datetime(2026, 11, 20, 1, 30, tzinfo=UTC), "2026-11-19"),
        ("rollup_weekly_monday_0200", datetime(2026, 11, 23, 2, 0, tzinfo=UTC), "2026-11-16"),
        ("rollup_monthly_first_0330", datetime(2026, 12, 1, 3, 30, tzinfo=UTC), "2026-11-01"),
    ],
)
def test_schedules_request_the_right_partition(name, tick, partition, dagster_instance):
    instance = dagster_instance
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=tick,
        repository_def=REPO,
    )
    result = schedule(name).evaluate_tick(context)
    assert [r.partition_key for r in result.run_requests] == [partition]


def test_schedule_skips_while_a_run_is_in_flight(dagster_instance):
    instance = dagster_instance
    job = REPO.get_job("refresh_1m_open_hour")
    instance.create_run_for_job(
        job, status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": "2026-11-20-10:00"}
    )
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 11, 20, 10, 38, tzinfo=UTC),
        repository_def=REPO,
    )
    result = schedule("readings_1m_every_minute").evaluate_tick(context)
    assert not result.run_requests and "in flight" in result.skip_message


def test_blocking_check_fails_on_bad_rows_and_stops_downstream(
    warehouse_url, engine, dagster_instance
):
    data.seed(engine, days=1)
    assert run_hours(warehouse_url, "2026-11-02-00:00", "2026-11-02-01:00").success
    # Corrupt one sensor's stored 1m windows (as a bad manual edit would): min above max.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE bi.readings_1m SET min_value = max_value + 1 "
                "WHERE window_start >= '2026-11-02 01:00+00' "
                "AND sensor_id = (SELECT min(sensor_id) FROM bi.readings_1m)"
            )
        )
    instance = dagster_instance
    result = dg.materialize(
        [readings_5m, rollup_hourly],
        instance=instance,
        resources={
            "warehouse": WarehouseResource(database_url=warehouse_url),
            "influx": InfluxResource(),
        },
        partition_key="2026-11-02-01:00",
        raise_on_error=False,
    )
    evaluations = {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert not result.success
    # The levels above merged the bad minima faithfully: their invariants fail, blocking.
    assert evaluations["stats_valid"].passed is False
    assert evaluations["stats_valid"].blocking


def test_coverage_warns_when_a_device_goes_silent(warehouse_url, engine):
    data.seed(engine, days=1, hz=0.1)  # the catalogue expects one reading per 10 s
    assert run_hours(warehouse_url, "2026-11-02-00:00", "2026-11-02-04:00", [readings_1m]).success
    hour = datetime(2026, 11, 2, 5, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "DELETE FROM raw.readings WHERE device = 'arduino_002' AND time >= :s AND time < :e"
            ),
            {"s": hour, "e": hour + timedelta(hours=1)},
        )
    result = run_partition(warehouse_url, [readings_1m], "2026-11-02-05:00")
    check = next(
        e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        and e.asset_check_evaluation_data.check_name == "coverage"
    )
    assert result.success  # WARN does not fail the run
    assert check.passed is False and check.severity == dg.AssetCheckSeverity.WARN
    pct = check.metadata["coverage_pct"].value
    assert 60 < pct < 67  # two of three devices reported (minus simulated outages)


def test_dashboard_views_refresh(warehouse_url, engine):
    data.seed(engine, days=0.5)
    assert run_hours(warehouse_url, "2026-11-02-00:00", "2026-11-02-11:00", [readings_1m]).success
    result = dg.materialize(
        [dashboard_views],
        resources={
            "warehouse": WarehouseResource(database_url=warehouse_url),
            "influx": InfluxResource(),
        },
    )
    views = result.asset_materializations_for_node("dashboard_views")[0].metadata["views"].value
    assert views["bi.sensor_latest"]["rows"] == 21
    with engine.connect() as conn:
        latest = conn.execute(
            sa.text(
                "SELECT max(window_start) = min(window_start), max(window_start) "
                "FROM bi.sensor_latest"
            )
        ).one()
    assert latest[1] == datetime(2026, 11, 2, 11, 59, tzinfo=UTC)


def _materialize_history(url: str) -> None:
    assert run_hours(url, "2026-11-02-00:00", "2026-11-03-23:00").success
    resources = {"warehouse": WarehouseResource(database_url=url), "influx": InfluxResource()}
    tags = {
        "dagster/asset_partition_range_start": "2026-11-02",
        "dagster/asset_partition_range_end": "2026-11-03",
    }
    assert dg.materialize([daily_rollup_and_conditions], resources=resources, tags=tags).success
    assert dg.materialize([rollup_weekly], resources=resources, partition_key="2026-11-02").success


def run_retention(url: str, dry_run: bool) -> dict:
    result = retention_cleanup.execute_in_process(
        resources={"warehouse": WarehouseResource(database_url=url), "influx": InfluxResource()},
        run_config={"ops": {"retention_cleanup_op": {"config": {"dry_run": dry_run}}}},
    )
    assert result.success
    return result.output_for_node("retention_cleanup_op")


def test_retention_keeps_days_whose_rollups_are_incomplete(warehouse_url, engine, monkeypatch):
    # The month's wait (AGG_PIPELINE_MONTHLY_MEDIAN on) is faults/test_retention.py's.
    monkeypatch.setenv("AGG_PIPELINE_MONTHLY_MEDIAN", "false")
    data.seed(engine, days=2)
    _materialize_history(warehouse_url)
    with engine.begin() as conn:  # 11-02 stays fully rolled up; 11-03 loses its daily rollup
        conn.execute(sa.text("DELETE FROM bi.daily_sensor_agg WHERE metric_date = '2026-11-03'"))
    age = (date.today() - date(2026, 11, 2)).days
    monkeypatch.setenv("AGG_PIPELINE_RETENTION_RAW_DAYS", str(max(age - 2, 1)))
    monkeypatch.setenv("AGG_PIPELINE_RETENTION_DOWNSAMPLE_DAYS", str(max(age - 2, 1)))
    monkeypatch.setenv("AGG_PIPELINE_RETENTION_BATCH_ROWS", "1000")
    from agg_pipeline.config.settings import get_settings

    get_settings.cache_clear()
    with engine.connect() as conn:
        per_day = dict(
            conn.execute(
                sa.text(
                    "SELECT (time AT TIME ZONE 'UTC')::date, count(*) FROM raw.readings GROUP BY 1"
                )
            ).all()
        )

    dry = run_retention(warehouse_url, dry_run=True)
    # 11-03 has no daily rollup, and 11-02 shares its week: the weekly median needs both
    # days' raw readings until the whole week is rolled up, so neither day may go.
    assert dry["raw.readings"]["rows"] == 0
    kept = dry["raw.readings"]["days_kept"]
    assert "no daily rollup" in kept["2026-11-03"]
    assert "2026-11-03: no daily rollup" in kept["2026-11-02"]

    # Roll 11-03 up again: both days are safe, and go (in slices of about 1000 rows).
    assert dg.materialize(
        [daily_rollup_and_conditions],
        resources={
            "warehouse": WarehouseResource(database_url=warehouse_url),
            "influx": InfluxResource(),
        },
        partition_key="2026-11-03",
    ).success
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM raw.readings")).scalar_one() == sum(
            per_day.values()
        )  # dry run deleted nothing
    real = run_retention(warehouse_url, dry_run=False)
    assert real["raw.readings"]["rows"] == sum(per_day.values())
    with engine.connect() as conn:
        left = conn.execute(sa.text("SELECT count(*) FROM raw.readings")).scalar_one()
        daily = conn.execute(
            sa.text("SELECT count(*) FROM bi.daily_sensor_agg WHERE median_value IS NOT NULL")
        ).scalar_one()
    assert left == 0
    assert daily == 42  # rollups (and their medians) are untouched
    # 1m / 5m windows past their (shortened) retention are gone; hourly rollups stay.
    assert real["bi.readings_1m"]["rows"] > 0 and real["bi.hourly_sensor_agg"]["rows"] == 0


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_run_failure_alert_posts_json_and_never_crashes(monkeypatch, dagster_instance):
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received.clear()

    @dg.asset
    def broken():
        raise RuntimeError("disk full")

    instance = dagster_instance
    result = dg.materialize([broken], instance=instance, raise_on_error=False)
    failure = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[0]
    failure = failure.dagster_event
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alerts",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=failure,
    ).for_run_failure()
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hook")
    automation.run_failure_alerts(context)
    assert len(_Hook.received) == 1
    alert = _Hook.received[0]
    assert alert["event"] == "run_failure" and alert["run_id"] == result.run_id
    # An unreachable webhook is logged, not raised.
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "http://127.0.0.1:1/nothing-listens")
    automation.run_failure_alerts(context)
    server.shutdown()
