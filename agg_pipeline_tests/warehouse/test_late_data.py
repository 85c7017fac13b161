"""Late data heals itself: sensor tick -> self-healing ticks -> exactly the touched partitions.

The late-data sensor and the self-healing sensor are evaluated against a real Dagster
instance (sqlite storage in a temp dir) and a real warehouse; requested runs are executed
as the daemon would execute them. Time is frozen at a Monday noon so that the late
reading's week is complete (weekly partitions exist only for complete weeks).
(Until issue 11 this drove automation conditions; they were replaced by the healer.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from agg_pipeline.core import clock
from agg_pipeline.defs.assets import (
    daily_rollup_and_conditions,
    device_performance_hourly,
    readings_1m,
    readings_5m,
    rollup_hourly,
    rollup_weekly,
)
from agg_pipeline.defs.automation import late_data_sensor
from agg_pipeline.defs.operations import self_healing
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline_tests import data

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # a Monday
LATE_HOUR = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)  # three days earlier, a Friday
ASSETS = [
    readings_1m,
    readings_5m,
    rollup_hourly,
    device_performance_hourly,
    daily_rollup_and_conditions,
    rollup_weekly,
]


def tick_sensor(instance, resources, cursor):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = late_data_sensor(context)
    # What the daemon does with a sensor result: record its events.
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return result


def heal_tick(instance, resources) -> list[dg.RunRequest]:
    _, requests = self_healing.tick(instance, resources["warehouse"], resources["influx"])
    return requests


def run_requested(instance, resources, requests) -> set[tuple[str, str]]:
    """Execute what the healer requested, like the daemon: one run per request."""
    requested = set()
    for request in requests:
        assert request.partition_key  # one partition each here
        for key in request.asset_selection:
            requested.add((key.to_user_string(), request.partition_key))
        assert dg.materialize(
            ASSETS,
            selection=request.asset_selection,
            instance=instance,
            resources=resources,
            partition_key=request.partition_key,
            tags={**request.tags, "dagster/sensor_name": self_healing.NAME},
        ).success
    return requested


def count(engine, sql: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar_one()


@pytest.fixture
def frozen_now(monkeypatch):
    monkeypatch.setattr(clock, "now", lambda: NOW)


def test_late_reading_corrects_its_hour_day_and_week_only(
    warehouse_url, engine, frozen_now, dagster_instance
):
    resources = {
        "warehouse": WarehouseResource(database_url=warehouse_url),
        "influx": InfluxResource(),
    }
    data.seed(engine, start=datetime(2026, 11, 16, tzinfo=UTC), days=7, devices=2, hz=0.005)
    instance = dagster_instance
    # Seeding is history arriving now: every hour looks late once. Observe that first,
    # then materialize everything, as a first backfill would.
    first = tick_sensor(instance, resources, None)
    assert len(first.asset_events) > 100
    mat = dict(instance=instance, resources=resources)
    range_tags = lambda a, b: {  # noqa: E731
        "dagster/asset_partition_range_start": a,
        "dagster/asset_partition_range_end": b,
    }
    assert dg.materialize(
        [readings_1m, readings_5m, rollup_hourly, device_performance_hourly],
        tags=range_tags("2026-11-16-00:00", "2026-11-22-23:00"),
        **mat,
    ).success
    assert dg.materialize(
        [daily_rollup_and_conditions], tags=range_tags("2026-11-16", "2026-11-22"), **mat
    ).success
    assert dg.materialize([rollup_weekly], partition_key="2026-11-16", **mat).success

    assert heal_tick(instance, resources) == []  # nothing to correct yet

    before = {
        "hour": count(
            engine,
            "SELECT sum(sample_count) FROM bi.hourly_sensor_agg "
            "WHERE hour_start = '2026-11-20 10:00+00'",
        ),
        "day": count(
            engine,
            "SELECT sum(sample_count) FROM bi.daily_sensor_agg WHERE metric_date = '2026-11-20'",
        ),
        "week": count(engine, "SELECT sum(sample_count) FROM bi.weekly_sensor_agg"),
    }
    late = [
        (LATE_HOUR + timedelta(minutes=17, seconds=s), "arduino_001", "ph", 6.0 + s / 100)
        for s in range(3)
    ] + [(LATE_HOUR + timedelta(minutes=41), "arduino_002", "humidity", 64.0)]
    data.insert(engine, late)

    sensed = tick_sensor(instance, resources, first.cursor)
    assert [e.partition for e in sensed.asset_events] == ["2026-11-20-10:00"]
    seeded = next(e for e in first.asset_events if e.partition == "2026-11-20-10:00")
    total = sensed.asset_events[0].metadata["late_rows_total"].value
    assert total == seeded.metadata["late_rows_total"].value + 4

    requested: set[tuple[str, str]] = set()
    for _ in range(6):
        requests = heal_tick(instance, resources)
        if not requests:
            break
        requested |= run_requested(instance, resources, requests)
    assert requested == {
        ("readings_1m", "2026-11-20-10:00"),
        ("readings_5m", "2026-11-20-10:00"),
        ("rollup_hourly", "2026-11-20-10:00"),
        ("device_performance_hourly", "2026-11-20-10:00"),
        ("rollup_daily", "2026-11-20"),
        ("conditions_daily", "2026-11-20"),
        ("rollup_weekly", "2026-11-16"),
    }

    after = {
        "hour": count(
            engine,
            "SELECT sum(sample_count) FROM bi.hourly_sensor_agg "
            "WHERE hour_start = '2026-11-20 10:00+00'",
        ),
        "day": count(
            engine,
            "SELECT sum(sample_count) FROM bi.daily_sensor_agg WHERE metric_date = '2026-11-20'",
        ),
        "week": count(engine, "SELECT sum(sample_count) FROM bi.weekly_sensor_agg"),
    }
    assert {k: after[k] - before[k] for k in before} == {"hour": 4, "day": 4, "week": 4}

    # The correction says why it ran.
    event = instance.get_latest_materialization_event(dg.AssetKey("readings_1m"))
    md = event.asset_materialization.metadata
    assert md["reason"].value.startswith("automation")
    assert md["late_rows_found"].value == total
