"""Self-healing as a guarantee: the healer's ticks, driven through a real instance and a
real warehouse, in the interleavings that lost corrections before (issue 11).

Every scenario ends with every level equal to an independent pandas computation over raw
(count, mean, min, max, exact median, condition shares), and `agg-pipeline status` saying
stale while anything is stale and ok only after. Requested runs are executed as the
daemon would (real materializations, with the request's partition or range tags), in the
order each test chooses - including the adversarial ones.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from agg_pipeline import status
from agg_pipeline.config.settings import get_settings
from agg_pipeline.core import clock
from agg_pipeline.definitions import defs
from agg_pipeline.defs.assets import (
    ALL_ASSETS,
    daily_rollup_and_conditions,
    device_performance_hourly,
    readings_1m,
    readings_5m,
    rollup_hourly,
    rollup_weekly,
)
from agg_pipeline.defs.automation import JOBS, self_healing_sensor
from agg_pipeline.defs.operations import self_healing
from agg_pipeline.defs.readings.raw import observe_late_hours
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse import healing
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline.warehouse.writes import readings as writers
from agg_pipeline_tests import data, reference
from agg_pipeline_tests.warehouse.test_rollups import CATALOGUE, REL, assert_matches, table

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # a Monday noon
WEEK = datetime(2026, 11, 16, tzinfo=UTC)  # the healing window's first Monday
# The other scenarios use a one-day lookback and a one-day history: a range run stores
# one materialization per partition (~0.1 s each in the test's sqlite instance).
WED = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TUE = datetime(2026, 11, 24, tzinfo=UTC)
ASSETS = [
    readings_1m,
    readings_5m,
    rollup_hourly,
    device_performance_hourly,
    daily_rollup_and_conditions,
    rollup_weekly,
]
BANDS = {  # the demo batch (lettuce, vegetative), critical margin 20 %
    "temperature": (17.0, 24.0, 17.0 * 0.8, 24.0 * 1.2),
    "humidity": (50.0, 70.0, 40.0, 84.0),
    "ph": (5.5, 6.5, 4.4, 7.8),
    "ec": (1.2, 2.0, 0.96, 2.4),
}


class Clock:
    def __init__(self, monkeypatch, at: datetime):
        self.at = at
        monkeypatch.setattr(clock, "now", lambda: self.at)


@pytest.fixture
def env(warehouse_url, engine, dagster_instance, monkeypatch):
    resources = {
        "warehouse": WarehouseResource(database_url=warehouse_url),
        "influx": InfluxResource(),
    }
    # The project's jobs, bound to this test's warehouse.
    test_defs = dg.Definitions(
        assets=ALL_ASSETS, jobs=JOBS, resources=resources, executor=dg.in_process_executor
    )
    return dict(
        defs=test_defs,
        url=warehouse_url,
        engine=engine,
        instance=dagster_instance,
        resources=resources,
        clock=Clock(monkeypatch, NOW),
    )


@pytest.fixture
def short(env, monkeypatch):
    monkeypatch.setenv("AGG_PIPELINE_LATE_DATA_LOOKBACK_DAYS", "1")
    get_settings.cache_clear()
    env["clock"].at = WED
    return env


def tick(env) -> list[dg.RunRequest]:
    _, requests = self_healing.tick(
        env["instance"], env["resources"]["warehouse"], env["resources"]["influx"]
    )
    return requests


def execute(env, request: dg.RunRequest) -> None:
    """Run a request as the daemon would: through its job, its asset subset, its
    partition or partition-range tags."""
    tags = {**request.tags, "dagster/sensor_name": self_healing.NAME}
    if request.job_name:
        result = (
            env["defs"]
            .resolve_job_def(request.job_name)
            .execute_in_process(
                instance=env["instance"],
                partition_key=request.partition_key,
                asset_selection=request.asset_selection,
                tags=tags,
            )
        )
    else:  # a run made up by the test (not the healer's)
        result = dg.materialize(
            ASSETS,
            selection=request.asset_selection,
            instance=env["instance"],
            resources=env["resources"],
            partition_key=request.partition_key,
            tags=tags,
        )
    assert result.success


def describe(request: dg.RunRequest) -> tuple:
    tags = request.tags
    first = request.partition_key or tags[self_healing.RANGE_START]
    last = request.partition_key or tags[self_healing.RANGE_END]
    return (tuple(k.to_user_string() for k in request.asset_selection), first, last)


def heal(env, max_ticks: int = 8) -> list[list[tuple]]:
    """Tick, run what was requested, until a tick requests nothing: the runs per tick."""
    ticks = []
    for _ in range(max_ticks):
        requests = tick(env)
        if not requests:
            return ticks
        ticks.append([describe(r) for r in requests])
        for request in requests:
            execute(env, request)
    raise AssertionError(f"did not converge in {max_ticks} ticks: {ticks}")


HOURLY = ("readings_1m", "readings_5m", "rollup_hourly", "device_performance_hourly")
DAILY = ("rollup_daily", "conditions_daily")


def problems(env) -> list[str]:
    return status.healing_problems(env["engine"], env["clock"].at)


def assert_equals_raw(engine, start: datetime, end: datetime) -> None:
    """Every level over [start, end) (whole days) equals pandas over the raw rows."""
    raw = reference.load_raw(engine, start, end)
    valid = reference.valid_readings(raw, CATALOGUE, datetime.now(UTC))
    t = valid["time"]

    def within(frame, lo, hi):
        return frame[(frame["bucket"] >= lo) & (frame["bucket"] < hi)]

    got_1m = table(engine, "bi.readings_1m", "window_start", mean="mean_value")
    assert_matches(
        within(got_1m, start, end), reference.grouped_stats(valid, t.dt.floor("1min")), median=False
    )
    got_5m = table(engine, "bi.readings_5m", "window_start", mean="mean_value")
    assert_matches(
        within(got_5m, start, end), reference.grouped_stats(valid, t.dt.floor("5min")), median=False
    )
    got_h = table(engine, "bi.hourly_sensor_agg", "hour_start")
    assert_matches(within(got_h, start, end), reference.grouped_stats(valid, t.dt.floor("1h")))
    days = reference.local_day(t, "UTC")
    got_d = table(engine, "bi.daily_sensor_agg", "metric_date")
    assert_matches(within(got_d, start.date(), end.date()), reference.grouped_stats(valid, days))
    weeks = pd.Series([d - timedelta(days=d.weekday()) for d in days], index=valid.index)
    whole = [w for w in sorted(set(weeks)) if w >= start.date() and w + timedelta(7) <= end.date()]
    got_w = table(engine, "bi.weekly_sensor_agg", "week_start")
    exp_w = reference.grouped_stats(valid, weeks)
    assert_matches(got_w[got_w["bucket"].isin(whole)], exp_w[exp_w["bucket"].isin(whole)])
    exp_c = reference.conditions(valid, BANDS, "UTC", max_gap_seconds=300.0)
    with engine.connect() as conn:
        got_c = pd.read_sql(
            sa.text(
                "SELECT dv.device_code AS device, s.field, c.metric_date AS day, c.* "
                "FROM bi.daily_sensor_conditions c JOIN iot.sensors s ON s.id = c.sensor_id "
                "JOIN iot.devices dv ON dv.id = s.device_id "
                "WHERE c.metric_date >= :lo AND c.metric_date < :hi"
            ),
            conn,
            params={"lo": start.date(), "hi": end.date()},
        )
    merged = exp_c.merge(got_c, on=["device", "field", "day"], how="outer", indicator=True)
    assert (merged["_merge"] == "both").all()
    assert (merged["reading_count_x"] == merged["reading_count_y"]).all()
    for col in ("optimal_pct_by_count", "time_in_optimal_pct", "time_in_critical_pct"):
        assert merged[f"{col}_y"].to_numpy() == pytest.approx(
            merged[f"{col}_x"].to_numpy(), rel=REL, abs=1e-9
        ), col


def late_rows(at: datetime, n: int = 3, device: str = "arduino_001") -> list[tuple]:
    # Extremes, so that count, min/max and median all move.
    return [(at + timedelta(minutes=7, seconds=s), device, "ph", 5.0 + s) for s in range(n)]


# --------------------------------------------------------------------------------------


def test_every_healed_edge_is_the_asset_graph():
    graph = defs.resolve_asset_graph()
    for node in healing.NODES:
        parents = {p.to_user_string() for p in graph.get(dg.AssetKey(node.asset)).parent_keys}
        assert set(node.parents) == parents, node.asset
        pdef = graph.get(dg.AssetKey(node.asset)).partitions_def
        assert pdef is self_healing.PDEFS[node.grain], node.asset
        assert graph.get(dg.AssetKey(node.asset)).automation_condition is None  # one mechanism


def test_first_fill_then_parent_and_child_stale_in_one_tick_child_run_first(env):
    engine = env["engine"]
    # The weekend before NOW: a week partition whose raw readings are all in the window.
    weekend = datetime(2026, 11, 21, tzinfo=UTC)
    data.seed(engine, start=weekend, days=2, devices=2, hz=0.005)
    # A fresh deployment on a warehouse that already holds raw readings.
    assert any("stale" in p for p in problems(env))
    first = heal(env)
    # Level by level, one multi-partition run each: hours, then days, then the week.
    assert first == [
        [(HOURLY, "2026-11-21-00:00", "2026-11-22-23:00")],
        [(DAILY, "2026-11-21", "2026-11-22")],
        [(("rollup_weekly",), "2026-11-16", "2026-11-16")],
    ]
    assert problems(env) == []
    assert_equals_raw(engine, WEEK, WEEK + timedelta(days=7))

    # Late readings into two hours of two days: hours *and* days are stale now (the days
    # read raw directly too). One tick requests only the hours.
    data.insert(engine, late_rows(datetime(2026, 11, 21, 10, tzinfo=UTC)))
    data.insert(engine, late_rows(datetime(2026, 11, 22, 3, tzinfo=UTC), device="arduino_002"))
    requests = tick(env)
    assert [describe(r) for r in requests] == [
        (HOURLY, "2026-11-21-10:00", "2026-11-21-10:00"),
        (HOURLY, "2026-11-22-03:00", "2026-11-22-03:00"),
    ]
    assert any("rollup_daily: 2 stale" in p for p in problems(env))

    # Adversarial order: the day runs first, from the old hours (as the observed bug did:
    # a schedule, a click, or another mechanism), then the hours.
    execute(
        env,
        dg.RunRequest(asset_selection=[dg.AssetKey(k) for k in DAILY], partition_key="2026-11-21"),
    )
    assert any("rollup_daily" in p for p in problems(env))  # still stale: hours moved after
    for request in requests:
        execute(env, request)
    # The day that ran first is stale again (its hours changed after it read them).
    assert heal(env) == [
        [(DAILY, "2026-11-21", "2026-11-22")],
        [(("rollup_weekly",), "2026-11-16", "2026-11-16")],
    ]
    assert problems(env) == []
    assert_equals_raw(engine, WEEK, WEEK + timedelta(days=7))


def test_parent_written_while_the_child_runs(short, monkeypatch):
    env = short
    engine = env["engine"]
    data.seed(engine, start=TUE, days=1, devices=2, hz=0.005)
    assert heal(env) == [
        [(HOURLY, "2026-11-24-00:00", "2026-11-24-23:00")],
        [(DAILY, "2026-11-24", "2026-11-24")],
    ]
    data.insert(engine, late_rows(datetime(2026, 11, 24, 8, tzinfo=UTC)))
    requests = tick(env)
    assert [describe(r)[0] for r in requests] == [HOURLY]
    for r in requests:
        execute(env, r)
    (day_request,) = tick(env)
    assert describe(day_request) == (DAILY, "2026-11-24", "2026-11-24")

    # While the day's run is inside its transaction (watermark read, raw staged, hours
    # not yet merged), another reading arrives in a later hour of the same day and that
    # hour is fully rebuilt and committed. The day then merges the new hours against its
    # old raw pass: a NULL ('inconsistent') median, as in the issue.
    second = datetime(2026, 11, 24, 15, tzinfo=UTC)
    merge_chunk = writers._merge_chunk
    fired = []

    def parent_changes_mid_run(conn, ctx, level, chunk, report, stage):
        if level is writers.LEVEL_DAILY and not fired:
            fired.append(True)
            data.insert(engine, late_rows(second, n=2))
            observe_late_hours(env["resources"]["warehouse"])  # raw-hour version bumps
            window = writers.Window(second, second + timedelta(hours=1))
            wctx = writers.WriteContext(ctx.warehouse, ctx.source, ctx.catalogue, ctx.settings)
            writers.write_readings_1m(wctx, window)
            writers.write_merged_level(wctx, writers.LEVEL_5M, window)
            writers.write_merged_level(wctx, writers.LEVEL_HOURLY, window)
        return merge_chunk(conn, ctx, level, chunk, report, stage)

    monkeypatch.setattr(writers, "_merge_chunk", parent_changes_mid_run)
    execute(env, day_request)
    monkeypatch.setattr(writers, "_merge_chunk", merge_chunk)
    assert fired
    with engine.connect() as conn:
        nulls = conn.execute(
            sa.text(
                "SELECT count(*) FROM bi.daily_sensor_agg "
                "WHERE metric_date = '2026-11-24' AND median_value IS NULL"
            )
        ).scalar_one()
    assert nulls == 1  # the sensor whose raw changed mid-run
    found = problems(env)
    assert any("NULL medians" in p for p in found), found
    assert any("rollup_daily: 1 stale" in p for p in found), found
    # Hour 15:00's device metrics were not rebuilt by the hook: stale as well, and healed.
    assert heal(env) == [
        [
            (("device_performance_hourly",), "2026-11-24-15:00", "2026-11-24-15:00"),
            (DAILY, "2026-11-24", "2026-11-24"),  # device metrics are not a day's parent
        ],
    ]
    assert problems(env) == []
    assert_equals_raw(engine, TUE, TUE + timedelta(days=1))


def test_daemon_down_six_hours_fills_hours_then_the_day(short):
    env = short
    engine = env["engine"]
    clock_ = env["clock"]
    monday = datetime(2026, 11, 23, 6, tzinfo=UTC)
    data.seed(engine, start=monday, days=14 / 24, devices=2, hz=0.005)  # 06:00 to 20:00
    clock_.at = datetime(2026, 11, 23, 20, 30, tzinfo=UTC)
    heal(env)
    assert problems(env) == []
    # The daemon stops; six hours of readings arrive (across midnight); no tick runs.
    down_from = datetime(2026, 11, 23, 20, tzinfo=UTC)
    data.seed(engine, start=down_from, days=6 / 24, devices=2, hz=0.005, seed=11)
    clock_.at = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # restart, past the 01:30 deadline
    assert any("not yet observed" in p for p in problems(env))
    ticks = heal(env)
    assert ticks == [
        [(HOURLY, "2026-11-23-20:00", "2026-11-24-01:00")],
        [(DAILY, "2026-11-23", "2026-11-23")],
    ]
    assert problems(env) == []
    assert_equals_raw(engine, monday, datetime(2026, 11, 24, tzinfo=UTC))
    # The hours after midnight too (the day of 11-24 is not over).
    raw = reference.load_raw(
        engine, datetime(2026, 11, 24, tzinfo=UTC), datetime(2026, 11, 24, 2, tzinfo=UTC)
    )
    valid = reference.valid_readings(raw, CATALOGUE, datetime.now(UTC))
    got_h = table(engine, "bi.hourly_sensor_agg", "hour_start")
    lo = pd.Timestamp("2026-11-24", tz="UTC")
    assert_matches(
        got_h[got_h["bucket"] >= lo], reference.grouped_stats(valid, valid["time"].dt.floor("1h"))
    )


def test_in_flight_parent_holds_the_child(short):
    """A queued or running run of a parent (e.g. the :05 schedule) holds its children."""
    env = short
    engine = env["engine"]
    data.seed(engine, start=TUE, days=1, devices=2, hz=0.005)
    heal(env)
    data.insert(engine, late_rows(datetime(2026, 11, 24, 9, tzinfo=UTC)))
    run = env["instance"].create_run_for_job(
        defs.resolve_job_def("hourly_rollup"),
        tags={"dagster/partition": "2026-11-24-09:00"},
    )
    assert env["instance"].get_run_by_id(run.run_id).status == dg.DagsterRunStatus.NOT_STARTED
    assert tick(env) == []  # the hour is in flight: nothing else is requested for it
    env["instance"].report_run_canceled(run)
    # The sensor as the daemon evaluates it: the same request, through the hourly job.
    context = dg.build_sensor_context(
        instance=env["instance"], resources=env["resources"], definitions=defs
    )
    (request,) = self_healing_sensor(context)
    assert request.job_name == "hourly_rollup"
    assert describe(request) == (HOURLY, "2026-11-24-09:00", "2026-11-24-09:00")
    execute(env, request)
    assert heal(env) == [[(DAILY, "2026-11-24", "2026-11-24")]]
    assert problems(env) == []


def test_partition_helpers_cover_whole_weeks():
    origin = datetime(2025, 1, 1, tzinfo=UTC)
    zone = ZoneInfo("UTC")
    days = healing.partitions_between(
        "daily", datetime(2026, 11, 16, 12, tzinfo=UTC), NOW, origin, zone
    )
    assert days[0] == datetime(2026, 11, 16, tzinfo=zone) and len(days) == 8
    weeks = healing.partitions_between("weekly", WEEK, NOW, origin, zone)
    assert [w.date() for w in weeks] == [date(2026, 11, 16), date(2026, 11, 23)]
