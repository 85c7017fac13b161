"""bi.hour_values: the daily, weekly and monthly levels read the hours readings_1m kept
instead of raw, only while those hours are current, and write the same rows either way."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa

from agg_pipeline.config.catalogue import load_catalogue
from agg_pipeline.config.settings import Settings
from agg_pipeline.core.windows import Window, day_window
from agg_pipeline.sources import readings_source
from agg_pipeline.warehouse import late_data
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline.warehouse.writes import readings as writers
from agg_pipeline_tests import data, reference

BERLIN = "Europe/Berlin"
CATALOGUE = load_catalogue("hydroponics")
# Monday 2026-10-19 .. Sunday 2026-10-25 (Berlin leaves summer time that Sunday: 25 hours).
WEEK = date(2026, 10, 19)
ZONE = ZoneInfo(BERLIN)


def context(url: str, hour_values: bool = True) -> writers.WriteContext:
    warehouse = WarehouseResource(database_url=url)
    s = Settings(timezone=BERLIN, hour_values=hour_values)
    source = readings_source(
        CATALOGUE, warehouse.get_engine(), s.parallelism, hour_values=s.hour_values
    )
    return writers.WriteContext(warehouse, source, CATALOGUE, s)


def week_window() -> Window:
    return Window(day_window(WEEK, ZONE).start, day_window(WEEK + timedelta(days=6), ZONE).end)


def seed_week(engine: sa.Engine) -> None:
    start = week_window().start - timedelta(hours=2)
    data.seed(engine, start=start, days=7.2, devices=2, hz=0.01)
    # Rejected and duplicate rows inside the week, and one (device, field, hour) holding
    # only a rejected reading (it has no hour values: its window falls back to raw).
    data.insert(engine, data.bad_rows(datetime(2026, 10, 21, 9, tzinfo=UTC)))
    data.insert(engine, data.bad_rows(datetime(2026, 10, 25, 1, 30, tzinfo=UTC)))
    data.insert(engine, [(datetime(2026, 10, 23, 8, 20, tzinfo=UTC), "lonely_1", "ph", None)])
    drain(engine)


def drain(engine: sa.Engine) -> None:
    """Fold the change log into raw versions, as the healer's tick does."""
    late_data.drain(engine, week_window().start - timedelta(days=30), timedelta(0))


def levels(engine: sa.Engine) -> dict[str, pd.DataFrame]:
    """The three tables the levels above the hour write, in a comparable order."""
    queries = {
        "daily": "SELECT sensor_id, metric_date, sample_count, avg_value, median_value, "
        "stddev_value, time_in_optimal_pct, time_in_critical_pct FROM bi.daily_sensor_agg",
        "conditions": "SELECT sensor_id, metric_date, reading_count, optimal_pct_by_count, "
        "critical_pct_by_count, covered_seconds, time_in_optimal_pct, time_in_critical_pct "
        "FROM bi.daily_sensor_conditions",
        "weekly": "SELECT sensor_id, week_start, sample_count, avg_value, median_value "
        "FROM bi.weekly_sensor_agg",
    }
    with engine.connect() as conn:
        return {
            name: pd.read_sql(sa.text(sql), conn).sort_values(list(pd.read_sql(
                sa.text(sql + " LIMIT 0"), conn).columns[:2])).reset_index(drop=True)
            for name, sql in queries.items()
        }  # fmt: skip


def conditions_row(engine: sa.Engine, day: date, device: str, field: str) -> sa.Row:
    """The one bi.daily_sensor_conditions row of ``device``'s ``field`` on ``day``."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT c.reading_count, c.critical_pct_by_count, c.critical_below, "
                "c.critical_above FROM bi.daily_sensor_conditions c "
                "JOIN iot.sensors s ON s.id = c.sensor_id JOIN iot.devices dv "
                "ON dv.id = s.device_id WHERE c.metric_date = :d "
                "AND dv.device_code = :device AND s.field = :field"
            ),
            {"d": day, "device": device, "field": field},
        ).one()


def write_above_hours(ctx: writers.WriteContext) -> dict[str, writers.WriteReport]:
    window = week_window()
    daily = writers.write_daily(ctx, window)
    weekly = writers.write_merged_level(ctx, writers.LEVEL_WEEKLY, window)
    return {**daily, "rollup_weekly": weekly}


def test_levels_from_hour_values_equal_raw_path_and_pandas(warehouse_url, engine):
    seed_week(engine)
    ctx = context(warehouse_url)
    window = week_window()
    writers.write_readings_1m(ctx, window)
    writers.write_merged_level(ctx, writers.LEVEL_HOURLY, window)

    with engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT sum(reading_count) FROM bi.hour_values")).scalar()
    raw = reference.load_raw(engine, window.start, window.end)
    valid = reference.valid_readings(raw, CATALOGUE, datetime.now(UTC))
    assert kept == len(valid)

    reports = write_above_hours(ctx)
    # 7 daily chunks; 2026-10-23 holds an hour whose only reading (device lonely_1) was
    # rejected: no hour values stand for it, so that day (and the week) read raw.
    assert reports["rollup_daily"].read_from == {"hour_values": 6, "raw": 1}
    assert reports["conditions_daily"].read_from == {"hour_values": 6, "raw": 1}
    assert reports["rollup_weekly"].read_from == {"raw": 1}
    # Without that row every window is covered by its hours.
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM raw.readings WHERE device = 'lonely_1'"))
    # Undrained, that delete is a change the kept hours may not hold: raw again.
    assert write_above_hours(ctx)["rollup_weekly"].read_from == {"raw": 1}
    drain(engine)  # its hour's raw version is now newer than the 1m pass: recompute it
    writers.write_readings_1m(ctx, day_window(date(2026, 10, 23), ZONE))
    reports = write_above_hours(ctx)
    assert reports["rollup_daily"].read_from == {"hour_values": 7}
    assert reports["conditions_daily"].read_from == {"hour_values": 7}
    assert reports["rollup_weekly"].read_from == {"hour_values": 1}
    from_hours = levels(engine)

    # Pandas, from raw: daily and weekly medians, and the daily condition counts.
    local = reference.local_day(valid["time"], BERLIN)
    exp_d = reference.grouped_stats(valid, local)
    with engine.connect() as conn:
        sensors = pd.read_sql(
            sa.text(
                "SELECT s.id AS sensor_id, dv.device_code AS device, s.field FROM iot.sensors s "
                "JOIN iot.devices dv ON dv.id = s.device_id"
            ),
            conn,
        )
    got_d = from_hours["daily"].merge(sensors, on="sensor_id")
    merged = exp_d.merge(
        got_d, left_on=["device", "field", "bucket"], right_on=["device", "field", "metric_date"]
    )
    assert len(merged) == len(exp_d) == len(got_d)
    assert (merged["count"] == merged["sample_count"]).all()
    assert merged["median_value"].to_numpy() == pytest.approx(merged["median"].to_numpy())
    exp_w = valid.groupby(["device", "field"])["value"].agg(["count", "median"]).reset_index()
    got_w = from_hours["weekly"].merge(sensors, on="sensor_id").merge(exp_w, on=["device", "field"])
    assert len(got_w) == len(exp_w)
    assert (got_w["count"] == got_w["sample_count"]).all()
    assert got_w["median_value"].to_numpy() == pytest.approx(got_w["median"].to_numpy())

    # The same levels read from raw (no hour values): the very same rows.
    raw_reports = write_above_hours(context(warehouse_url, hour_values=False))
    assert raw_reports["rollup_daily"].read_from == {"raw": 7}
    assert raw_reports["rollup_weekly"].read_from == {"raw": 1}
    from_raw = levels(engine)
    for name, frame in from_raw.items():
        pd.testing.assert_frame_equal(from_hours[name], frame, check_exact=False, rtol=1e-12)


def test_stale_hours_send_the_levels_to_raw(warehouse_url, engine):
    seed_week(engine)
    ctx = context(warehouse_url)
    day = WEEK + timedelta(days=2)
    window = day_window(day, ZONE)
    writers.write_readings_1m(ctx, window)
    writers.write_merged_level(ctx, writers.LEVEL_HOURLY, window)
    assert writers.write_daily(ctx, window)["conditions_daily"].read_from == {"hour_values": 1}

    def conditions_count() -> int:
        with engine.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT sum(reading_count) FROM bi.daily_sensor_conditions "
                    "WHERE metric_date = :d"
                ),
                {"d": day},
            ).scalar_one()

    before = conditions_count()
    # A late reading that the change log has not reported yet: the raw rows no longer
    # match the kept hours' counts, so the day reads raw and counts it.
    late_at = window.start + timedelta(hours=5, minutes=3, seconds=1)
    data.insert(engine, [(late_at, "arduino_001", "temperature", 21.0)])
    report = writers.write_daily(ctx, window)["conditions_daily"]
    assert report.read_from == {"raw": 1}
    assert conditions_count() == before + 1

    # Once the change is drained and readings_1m has re-run, its hours are current again:
    # hour values, same answer.
    drain(engine)
    writers.write_readings_1m(ctx, window)
    assert writers.write_daily(ctx, window)["conditions_daily"].read_from == {"hour_values": 1}
    assert conditions_count() == before + 1

    # A crash empties the UNLOGGED table: the counts differ, the day reads raw.
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE bi.hour_values"))
    assert writers.write_daily(ctx, window)["conditions_daily"].read_from == {"raw": 1}
    assert conditions_count() == before + 1
    writers.write_readings_1m(ctx, window)

    # A corrected value keeps the counts: undrained, the change log says so; drained, the
    # hour's raw version does. Raw both times.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE raw.readings SET value = 99.0 WHERE time = :t AND device = 'arduino_001' "
                "AND field = 'temperature'"
            ),
            {"t": late_at},
        )
    assert writers.write_daily(ctx, window)["conditions_daily"].read_from == {"raw": 1}
    drain(engine)
    report = writers.write_daily(ctx, window)["conditions_daily"]
    assert report.read_from == {"raw": 1}
    row = conditions_row(engine, day, "arduino_001", "temperature")
    raw = reference.load_raw(engine, window.start, window.end)
    valid = reference.valid_readings(raw, CATALOGUE, datetime.now(UTC))
    v = valid[(valid["device"] == "arduino_001") & (valid["field"] == "temperature")]["value"]
    assert row.critical_above < 99.0  # the corrected value is critical
    expected = int(((v < row.critical_below) | (v > row.critical_above)).sum())
    assert row.reading_count == len(v)
    assert round(row.critical_pct_by_count * row.reading_count / 100) == expected


def test_hour_values_off_keeps_none(warehouse_url, engine):
    seed_week(engine)
    ctx = context(warehouse_url, hour_values=False)
    window = day_window(WEEK, ZONE)
    writers.write_readings_1m(ctx, window)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM bi.hour_values")).scalar_one() == 0
    # And a re-run with them on, then off again, leaves none behind for the window.
    writers.write_readings_1m(context(warehouse_url), window)
    writers.write_readings_1m(ctx, window)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM bi.hour_values")).scalar_one() == 0


def test_readings_in_the_future_then_send_the_day_to_raw(warehouse_url, engine):
    seed_week(engine)
    day = WEEK + timedelta(days=1)
    window = day_window(day, ZONE)
    # A device clock ahead: stamped late in the day, rejected as future while the 1m pass
    # runs (its clock is pinned before them), valid by the time the day is written.
    ahead = window.end - timedelta(minutes=30)
    data.insert(engine, [(ahead, "arduino_001", "temperature", 21.5)])
    drain(engine)
    ctx = context(warehouse_url)
    writers.write_readings_1m(_pinned(ctx, ahead - timedelta(minutes=1)), window)
    report = writers.write_daily(ctx, window)["conditions_daily"]
    assert report.read_from == {"raw": 1}
    n = conditions_row(engine, day, "arduino_001", "temperature").reading_count
    raw = reference.load_raw(engine, window.start, window.end)
    valid = reference.valid_readings(raw, CATALOGUE, datetime.now(UTC))
    mine = valid[(valid["device"] == "arduino_001") & (valid["field"] == "temperature")]
    assert n == len(mine)


def _pinned(ctx: writers.WriteContext, latest: datetime) -> writers.WriteContext:
    """``ctx`` whose passes over raw take ``latest`` as the last allowed reading time (the
    database clock as it was then)."""
    pinned = copy.copy(ctx)
    base = ctx.stage_context
    object.__setattr__(
        pinned, "stage_context", lambda conn: dataclasses.replace(base(conn), latest_allowed=latest)
    )
    return pinned
