"""Late data heals itself: sensor tick -> automation ticks -> exactly the touched partitions.

The sensor and the automation conditions are evaluated against a real Dagster instance
(sqlite storage in a temp dir) and a real warehouse; requested runs are executed as the
daemon would execute them (one run per partition, assets in dependency order). Time is
frozen at a Monday noon so that the late reading's week is complete (weekly partitions
exist only for complete weeks).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from agg_pipeline import clock
from agg_pipeline.assets import (
    daily_rollup_and_conditions,
    readings_1m,
    readings_5m,
    rollup_hourly,
    rollup_weekly,
)
from agg_pipeline.automation import late_data_sensor
from agg_pipeline.definitions import defs
from agg_pipeline.resources.influx import InfluxResource
from agg_pipeline.resources.warehouse import WarehouseResource
from agg_pipeline_tests import data

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # a Monday
LATE_HOUR = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)  # three days earlier, a Friday
ASSETS = {
    "readings_1m": readings_1m,
    "readings_5m": readings_5m,
    "rollup_hourly": rollup_hourly,
    "rollup_daily": daily_rollup_and_conditions,
    "conditions_daily": daily_rollup_and_conditions,
    "rollup_weekly": rollup_weekly,
}
AUTOMATED = dg.AssetSelection.assets(*ASSETS)


def tick_sensor(instance, resources, cursor):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = late_data_sensor(context)
    # What the daemon does with a sensor result: record its events.
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return result


def run_requested(instance, resources, result) -> set[tuple[str, str]]:
    """Execute what automation requested: one run per partition, like the daemon."""
    by_partition: dict[str, list[str]] = defaultdict(list)
    requested = set()
    for key in ASSETS:
        for pk in result.get_requested_partitions(dg.AssetKey(key)):
            by_partition[pk].append(key)
            requested.add((key, pk))
    for pk, keys in by_partition.items():
        dg.materialize(
            list({id(ASSETS[k]): ASSETS[k] for k in keys}.values()),
            selection=keys,
            instance=instance,
            resources=resources,
            partition_key=pk,
            tags={"dagster/from_automation_condition": "true"},
        )
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
        [readings_1m, readings_5m, rollup_hourly],
        tags=range_tags("2026-11-16-00:00", "2026-11-22-23:00"),
        **mat,
    ).success
    assert dg.materialize(
        [daily_rollup_and_conditions], tags=range_tags("2026-11-16", "2026-11-22"), **mat
    ).success
    assert dg.materialize([rollup_weekly], partition_key="2026-11-16", **mat).success

    auto = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, asset_selection=AUTOMATED, evaluation_time=NOW
    )
    assert auto.total_requested == 0  # nothing to correct yet

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
    cursor = auto.cursor
    for _ in range(6):
        auto = dg.evaluate_automation_conditions(
            defs=defs,
            instance=instance,
            asset_selection=AUTOMATED,
            evaluation_time=NOW,
            cursor=cursor,
        )
        cursor = auto.cursor
        if not auto.total_requested:
            break
        requested |= run_requested(instance, resources, auto)
    assert requested == {
        ("readings_1m", "2026-11-20-10:00"),
        ("readings_5m", "2026-11-20-10:00"),
        ("rollup_hourly", "2026-11-20-10:00"),
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
