"""Local days across DST, future readings, an unreachable database."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from agg_pipeline.config.catalogue import load_catalogue
from agg_pipeline.config.settings import Settings
from agg_pipeline.core.windows import Window, day_window
from agg_pipeline.defs.assets import readings_1m
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.sources import readings_source
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline.warehouse.writes import readings as writers
from agg_pipeline_tests import data, reference
from agg_pipeline_tests.warehouse.test_rollups import assert_matches, table

BERLIN = "Europe/Berlin"
CATALOGUE = load_catalogue("hydroponics")


def context(url: str, **settings) -> writers.WriteContext:
    warehouse = WarehouseResource(database_url=url)
    s = Settings(**settings)
    return writers.WriteContext(
        warehouse,
        readings_source(CATALOGUE, warehouse.get_engine(), s.parallelism),
        CATALOGUE,
        s,
    )


@pytest.mark.parametrize(("day", "hours"), [(date(2025, 3, 30), 23), (date(2025, 10, 26), 25)])
def test_local_day_on_dst_change_is_exact(warehouse_url, engine, day, hours):
    data.seed(
        engine,
        start=datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(hours=6),
        days=1.5,
        devices=2,
        hz=0.01,
    )
    ctx = context(warehouse_url, timezone=BERLIN)
    window = day_window(day, ZoneInfo(BERLIN))
    assert window.seconds == hours * 3600
    writers.write_readings_1m(ctx, window)
    hourly = writers.write_merged_level(ctx, writers.LEVEL_HOURLY, window)
    conditions = writers.write_daily(ctx, window)["conditions_daily"]

    raw = reference.load_raw(engine, window.start, window.end)
    valid = reference.valid_readings(raw, CATALOGUE, datetime.now(UTC))
    local = reference.local_day(valid["time"], BERLIN)
    assert set(local) == {day}
    # one hourly row per sensor and local hour: 23 or 25 of them
    with engine.connect() as conn:
        hours_written = conn.execute(
            sa.text("SELECT count(DISTINCT hour_start) FROM bi.hourly_sensor_agg")
        ).scalar_one()
    assert hours_written == hours
    assert hourly.rows_written == 2 * 7 * hours
    assert_matches(
        table(engine, "bi.daily_sensor_agg", "metric_date"), reference.grouped_stats(valid, local)
    )
    # coverage expects 23 h / 25 h of readings at the catalogue's interval
    with engine.connect() as conn:
        expected = (
            conn.execute(
                sa.text("SELECT DISTINCT expected_readings FROM bi.daily_sensor_conditions")
            )
            .scalars()
            .all()
        )
    assert expected == [hours * 3600 / CATALOGUE.sample_interval_seconds]
    assert conditions.rows_written == 2 * 4


def test_future_readings_are_not_used(warehouse_url, engine):
    now = datetime.now(UTC).replace(microsecond=0)
    hour = now.replace(minute=0, second=0)
    rows = [
        # (90 s back: a closed minute; the open minute is not written yet)
        (now - timedelta(seconds=90), "arduino_001", "ph", 6.0),
        (now + timedelta(days=2), "arduino_001", "ph", 7.0),  # clock far ahead
    ]
    data.insert(engine, rows)
    ctx = context(warehouse_url, future_tolerance_seconds=300)
    report = writers.write_readings_1m(
        ctx, Window(hour - timedelta(hours=1), now + timedelta(days=3))
    )
    assert report.rejected["future"] == 1
    with engine.connect() as conn:
        values = conn.execute(sa.text("SELECT mean_value FROM bi.readings_1m")).scalars().all()
    assert values == [6.0]


def test_unreachable_database_fails_before_any_write():
    bad = WarehouseResource(database_url="postgresql+psycopg2://nobody:pw@127.0.0.1:1/nowhere")
    result = dg.materialize(
        [readings_1m],
        resources={"warehouse": bad, "influx": InfluxResource()},
        partition_key="2026-11-02-05:00",
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_failure)
    message = str(failure.event_specific_data.error)
    assert "cannot reach the warehouse" in message
    assert "pw" not in message.replace("nowhere", "")  # the password is masked


def test_conditions_use_widest_range_of_active_batches(warehouse_url, engine):
    data.seed(engine, days=1, devices=1)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO crop.batches "
                "(batch_code, crop_name, stage_name, started_on, ended_on) VALUES "
                "('B2', 'lettuce', 'seedling', '2026-11-01', NULL), "
                "('OLD', 'lettuce', 'mature', '2026-01-01', '2026-06-30')"
            )
        )
    ctx = context(warehouse_url)
    report = writers.write_conditions_daily(ctx, day_window(date(2026, 11, 2), ZoneInfo("UTC")))
    with engine.connect() as conn:
        ranges = pd.read_sql(
            sa.text(
                "SELECT s.field, c.optimal_min, c.optimal_max FROM bi.daily_sensor_conditions c "
                "JOIN iot.sensors s ON s.id = c.sensor_id"
            ),
            conn,
        ).set_index("field")
    # vegetative (demo batch) and seedling are active, mature ended in June: widest of two
    assert ranges.loc["ph"].tolist() == [5.5, 6.5]
    assert ranges.loc["humidity"].tolist() == [50.0, 75.0]
    assert ranges.loc["temperature"].tolist() == [17.0, 24.0]
    assert ranges.loc["ec"].tolist() == [0.8, 2.0]
    assert any("ph: optimal 5.5..6.5" in n for n in report.info)
