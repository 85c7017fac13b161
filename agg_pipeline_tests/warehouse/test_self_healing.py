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
from agg_pipeline.defs.events.levels import HEALING_GRAPH
from agg_pipeline.defs.operations import self_healing
from agg_pipeline.defs.readings.raw import observe_late_hours
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse import healing, late_data
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
    for node in HEALING_GRAPH.nodes:
        parents = {p.to_user_string() for p in graph.get(dg.AssetKey(node.asset)).parent_keys}
        assert set(node.parents) == parents, node.asset
        pdef = graph.get(dg.AssetKey(node.asset)).partitions_def
        assert pdef is self_healing.PDEFS[node.grain], node.asset
        assert graph.get(dg.AssetKey(node.asset)).automation_condition is None  # one mechanism
    # ... and every partitioned asset computed from something is healed (the event
    # rollups too, issue 13).
    computed = {
        k.to_user_string()
        for k in graph.materializable_asset_keys
        if graph.get(k).partitions_def is not None and graph.get(k).parent_keys
    }
    assert computed == set(HEALING_GRAPH.by_asset)


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
    # Local months: the one the window starts in (whole), up to the open one.
    berlin = ZoneInfo("Europe/Berlin")
    months = healing.partitions_between(
        "monthly", WEEK, datetime(2027, 1, 2, tzinfo=UTC), origin, berlin
    )
    assert [m.date() for m in months] == [date(2026, 11, 1), date(2026, 12, 1), date(2027, 1, 1)]
    assert healing.end_of("monthly", months[1], berlin) == datetime(2027, 1, 1, tzinfo=berlin)
    assert healing.end_of("monthly", months[1], berlin).utcoffset() == timedelta(hours=1)


# --------------------------------------------------------------------------------------
# The other sources: raw.events -> pattern detectors -> anomalies; raw.diagnostics
# --------------------------------------------------------------------------------------

PATTERNS = tuple(
    f"pattern_{n}_daily"
    for n in ("time_based", "co_occurrence", "sequence", "room_based", "duration", "anomaly")
)
MON = datetime(2026, 11, 23, tzinfo=UTC)


def insert_events(engine, rows: list[tuple]) -> None:
    """(time, entity_id, state) rows; domain from the entity, area 'kitchen'."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO raw.events (time, entity_id, domain, area_id, state) "
                "VALUES (:t, :e, split_part(:e, '.', 1), 'kitchen', :s)"
            ),
            [{"t": t, "e": e, "s": s} for t, e, s in rows],
        )


def insert_diagnostics(engine, rows: list[tuple]) -> None:
    """(time, device, diagnosis_type, severity, confidence) rows."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO raw.diagnostics (time, device, diagnosis_type, severity, "
                "confidence) VALUES (:t, :d, :k, :s, :c)"
            ),
            [{"t": t, "d": d, "k": k, "s": s, "c": c} for t, d, k, s, c in rows],
        )


def assert_events_and_diagnostics_equal_raw(engine) -> None:
    """time_based and diagnostic_summary_daily equal pandas over raw (activations: an
    'on' whose previous event of the entity, any day before, is not 'on')."""
    with engine.connect() as conn:
        ev = pd.read_sql(sa.text("SELECT time, entity_id, state FROM raw.events"), conn)
        got = pd.read_sql(
            sa.text(
                "SELECT day, entity_id, occurrences, hourly_distribution "
                "FROM bi.pattern_time_based_daily"
            ),
            conn,
        )
        diag = pd.read_sql(sa.text("SELECT * FROM raw.diagnostics"), conn)
        got_d = pd.read_sql(
            sa.text(
                "SELECT dv.device_code AS device, s.metric_date AS day, s.diagnostics_count, "
                "s.confidence_min, s.confidence_max, s.by_severity "
                "FROM bi.diagnostic_summary_daily s JOIN iot.devices dv ON dv.id = s.device_id"
            ),
            conn,
        )
    ev = ev.sort_values(["entity_id", "time"])
    previous = ev.groupby("entity_id")["state"].shift()
    on = ev[(ev["state"] == "on") & (previous != "on")].copy()
    on["day"] = on["time"].dt.date
    expected = on.groupby(["day", "entity_id"]).size().rename("n").reset_index()
    merged = expected.merge(got, on=["day", "entity_id"], how="outer")
    assert (merged["n"].fillna(0) == merged["occurrences"].fillna(0)).all(), merged
    for _, row in got.iterrows():
        hours = on[(on["day"] == row["day"]) & (on["entity_id"] == row["entity_id"])]
        assert sorted(row["hourly_distribution"]) == sorted(
            hours["time"].dt.hour.value_counts().reindex(range(24), fill_value=0).tolist()
        )
    diag["day"] = diag["time"].dt.date
    exp_d = (
        diag.groupby(["device", "day"])
        .agg(n=("confidence", "size"), lo=("confidence", "min"), hi=("confidence", "max"))
        .reset_index()
    )
    merged = exp_d.merge(got_d, on=["device", "day"], how="outer")
    assert (merged["n"] == merged["diagnostics_count"]).all(), merged
    assert merged["lo"].to_numpy() == pytest.approx(merged["confidence_min"].to_numpy())
    assert merged["hi"].to_numpy() == pytest.approx(merged["confidence_max"].to_numpy())
    for _, row in merged.iterrows():
        counts = diag[(diag["device"] == row["device"]) & (diag["day"] == row["day"])]
        assert row["by_severity"] == counts["severity"].value_counts().to_dict()


def test_events_and_diagnostics_heal_like_readings(short):
    """First fill, then late rows: detectors re-run for their day and the days that carry
    its state (Monday's late 'on' changes Tuesday's first activation), anomalies with
    them, the diagnostics summary for its day - and nothing else."""
    env = short
    engine = env["engine"]
    rows = []
    for day in (MON, TUE):
        for h in range(6, 22, 2):  # on at even hours, off half an hour later
            rows += [
                (day + timedelta(hours=h), "light.kitchen", "on"),
                (day + timedelta(hours=h, minutes=30), "light.kitchen", "off"),
                (day + timedelta(hours=h, minutes=1), "switch.fan", "on"),
                (day + timedelta(hours=h, minutes=20), "switch.fan", "off"),
            ]
    insert_events(engine, rows)
    insert_diagnostics(
        engine,
        [
            (day + timedelta(hours=h), dev, "drift", sev, c)
            for day in (MON, TUE)
            for h, dev, sev, c in ((3, "arduino_001", "low", 0.4), (9, "arduino_002", "high", 0.9))
        ],
    )
    assert any("stale" in p for p in problems(env))
    assert heal(env) == [
        [
            (("diagnostic_summary_daily",), "2026-11-23", "2026-11-24"),
            (PATTERNS, "2026-11-23", "2026-11-24"),
        ]
    ]
    assert problems(env) == []
    assert_events_and_diagnostics_equal_raw(engine)

    # Late: Monday's light left on at 23:50 (Tuesday's 06:00 'on' is no activation now),
    # one more diagnosis on Tuesday.
    insert_events(engine, [(MON + timedelta(hours=23, minutes=50), "light.kitchen", "on")])
    insert_diagnostics(engine, [(TUE + timedelta(hours=15), "arduino_001", "leak", "critical", 1)])
    assert heal(env) == [
        [
            (("diagnostic_summary_daily",), "2026-11-24", "2026-11-24"),
            (PATTERNS, "2026-11-23", "2026-11-24"),
        ]
    ]
    assert problems(env) == []
    assert_events_and_diagnostics_equal_raw(engine)

    # Retention released Monday (its aggregates are final): a late row for it re-runs
    # the day, which keeps its rows and is current all the same - no loop.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO ops.raw_retention_ledger (source_table, day, rows_deleted, method) "
                "VALUES ('raw.events', '2026-11-23', 0, 'delete'), "
                "('raw.diagnostics', '2026-11-23', 0, 'delete')"
            )
        )

    def monday():
        with engine.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT (SELECT array_agg(occurrences ORDER BY entity_id) "
                    "FROM bi.pattern_time_based_daily WHERE day = '2026-11-23'), "
                    "(SELECT array_agg(diagnostics_count ORDER BY device_id) "
                    "FROM bi.diagnostic_summary_daily WHERE metric_date = '2026-11-23')"
                )
            ).one()

    kept = monday()
    late = [
        (MON + timedelta(hours=13, minutes=m), "switch.fan", s)
        for m, s in ((10, "on"), (15, "off"))
    ]
    insert_events(engine, late)  # one activation more, if Monday were recomputed
    insert_diagnostics(engine, [(MON + timedelta(hours=12), "arduino_002", "drift", "low", 0.2)])
    assert heal(env) == [
        [
            (("diagnostic_summary_daily",), "2026-11-23", "2026-11-23"),
            (PATTERNS, "2026-11-23", "2026-11-24"),
        ]
    ]
    assert monday() == kept


# --------------------------------------------------------------------------------------
# Cross-level consistency fed back; children held behind a failing blocking check
# --------------------------------------------------------------------------------------


def check_passed(env, asset: str, name: str) -> bool:
    record = env["instance"].get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(dg.AssetKey(asset), name)
    )
    return record.evaluation.passed


def test_a_rollup_corrupted_behind_the_pipelines_back_is_recomputed(short, monkeypatch):
    env = short
    engine = env["engine"]
    monkeypatch.setenv("AGG_PIPELINE_CONSISTENCY_SCAN_MINUTES", "0")  # scan every tick
    get_settings.cache_clear()
    data.seed(engine, start=TUE, days=1, devices=2, hz=0.005)
    heal(env)
    assert check_passed(env, "rollup_daily", "consistent_with_parents")
    # A manual edit: one day's count. Nothing about it changes a data version.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE bi.daily_sensor_agg SET sample_count = sample_count + 5 "
                "WHERE metric_date = '2026-11-24' "
                "AND sensor_id = (SELECT min(sensor_id) FROM bi.daily_sensor_agg)"
            )
        )
    assert any("rollup_daily vs rollup_hourly" in p for p in problems(env))
    # One tick finds it (the scan), one run fixes it.
    (request,) = tick(env)
    assert describe(request) == (DAILY, "2026-11-24", "2026-11-24")
    assert "inconsistent with its parents" in request.tags[self_healing.REASON_TAG]
    execute(env, request)
    assert tick(env) == []
    assert problems(env) == []
    assert_equals_raw(engine, TUE, TUE + timedelta(days=1))

    # The check after a write finds what the write could not fix: an hour edited by hand,
    # then its day rebuilt from it (a click). The day's check fails (its count is not the
    # day's valid raw count) and flags it; the scan flags the hour; the healer fixes both.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE bi.hourly_sensor_agg SET sample_count = sample_count + 2 "
                "WHERE hour_start = '2026-11-24 05:00+00' "
                "AND sensor_id = (SELECT min(sensor_id) FROM bi.hourly_sensor_agg)"
            )
        )
    execute(
        env,
        dg.RunRequest(asset_selection=[dg.AssetKey(k) for k in DAILY], partition_key="2026-11-24"),
    )
    assert not check_passed(env, "rollup_daily", "consistent_with_parents")
    with engine.connect() as conn:  # the check's verdict, fed back: the day is stale
        flagged = conn.execute(
            sa.text(
                "SELECT inconsistent_version = version FROM ops.partition_versions "
                "WHERE asset = 'rollup_daily' AND partition_start = :d"
            ),
            {"d": TUE},
        ).scalar_one()
    assert flagged
    assert heal(env) == [
        [(("rollup_hourly", "device_performance_hourly"), "2026-11-24-05:00", "2026-11-24-05:00")],
        [(DAILY, "2026-11-24", "2026-11-24")],
    ]
    assert check_passed(env, "rollup_daily", "consistent_with_parents")
    assert problems(env) == []
    assert_equals_raw(engine, TUE, TUE + timedelta(days=1))


def test_children_wait_while_a_blocking_check_fails(short):
    env = short
    engine = env["engine"]
    data.seed(engine, start=TUE, days=1, devices=2, hz=0.005)
    heal(env)
    data.insert(engine, late_rows(datetime(2026, 11, 24, 9, tzinfo=UTC)))
    hour = "2026-11-24-09:00"
    assert [describe(r) for r in tick(env)] == [(HOURLY, hour, hour)]  # not run: instead,
    execute(env, dg.RunRequest(asset_selection=[dg.AssetKey("readings_1m")], partition_key=hour))
    # A bad edit of the minutes, then the hour rebuilt from them by hand (not the healer's
    # run): its blocking stats_valid fails.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE bi.readings_1m SET min_value = max_value + 1 "
                "WHERE window_start >= '2026-11-24 09:00+00' "
                "AND window_start < '2026-11-24 10:00+00' "
                "AND sensor_id = (SELECT min(sensor_id) FROM bi.readings_1m)"
            )
        )
    result = dg.materialize(
        [rollup_hourly],
        instance=env["instance"],
        resources=env["resources"],
        partition_key=hour,
        raise_on_error=False,
    )
    assert not result.success
    # The hour's children (its device metrics, the day) wait; what does not read it runs.
    plan, requests = self_healing.tick(
        env["instance"], env["resources"]["warehouse"], env["resources"]["influx"]
    )
    assert [describe(r) for r in requests] == [
        (("readings_5m",), hour, hour),
        (("conditions_daily",), "2026-11-24", "2026-11-24"),
    ]
    held = {(s.asset, s.reason) for s in plan.held}
    why = f"{healing.HELD_BY_CHECK}: rollup_hourly 2026-11-24T09:00:00+00:00 stats_valid"
    assert held == {("device_performance_hourly", why), ("rollup_daily", why)}
    shown = f"rollup_daily: held at 2026-11-24T00:00:00+00:00: {why}"
    assert shown in problems(env)
    # (The 5-minute windows merge the bad minutes too: that run would fail its own check.)
    execute(env, requests[1])
    assert [describe(r) for r in tick(env)] == [(("readings_5m",), hour, hour)]  # still held
    # The hour is rebuilt at every level (the minutes from raw): the check passes, the
    # children follow.
    keys = [dg.AssetKey(k) for k in HOURLY]
    execute(env, dg.RunRequest(asset_selection=keys, partition_key=hour))
    assert heal(env) == [[(DAILY, "2026-11-24", "2026-11-24")]]
    assert problems(env) == []
    assert_equals_raw(engine, TUE, TUE + timedelta(days=1))


def test_an_event_moved_to_another_day_changes_both(engine):
    """The events' trigger logs an UPDATE's old and new times (sql/018)."""
    insert_events(engine, [(MON + timedelta(hours=8), "light.hall", "on")])
    origin = self_healing.origin()
    late_data.drain_sources(engine, origin)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE raw.events SET time = time + interval '1 day'"))
    late_data.drain_sources(engine, origin)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT partition_start, version FROM ops.partition_versions "
                "WHERE asset = 'raw_events' ORDER BY 1"
            )
        ).all()
    assert [r[0] for r in rows] == [MON + timedelta(hours=8), TUE + timedelta(hours=8)]
    assert rows[0][1] != rows[1][1]  # Monday's hour got a second version, with Tuesday's


def test_an_inconsistent_partition_is_recomputed_a_few_times_then_reported():
    """Planning only (no database): the loop guard on the consistency flag."""
    settings = get_settings()
    origin = datetime(2025, 1, 1, tzinfo=UTC)
    hour = datetime(2026, 11, 20, 10, tzinfo=UTC)
    day = datetime(2026, 11, 20, tzinfo=ZoneInfo(settings.timezone))

    def plan_with(runs: int) -> healing.Plan:
        rows = [("raw_readings", hour, 1, None, None, 0, None)]
        # Every level current (computed after every version there is) ...
        rows += [(a, hour, 2, 9, None, 0, None) for a in HOURLY]
        rows += [
            ("conditions_daily", day, 3, 9, None, 0, None),
            ("rollup_daily", day, 3, 9, 3, runs, None),  # ... but the day's write is flagged
        ]
        return healing.plan(healing.Versions(rows), NOW, settings, origin, healing.BASE)

    (request,) = plan_with(1).requests
    assert request.assets == DAILY
    assert set(request.reasons) == {"inconsistent with its parents", "parent rewritten in this run"}
    stuck = plan_with(healing.MAX_INCONSISTENT_RUNS + 1)
    assert stuck.requests == []
    held = {s.asset: s.reason for s in stuck.held}
    assert held == {
        "rollup_daily": f"{healing.STUCK} 4 recomputations",
        "rollup_weekly": "missing",  # its day is not right: it waits
    }


# --------------------------------------------------------------------------------------
# The event rollups: raw.executions -> execution_metrics_hourly .. monthly
# --------------------------------------------------------------------------------------

DEC1 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)  # a Tuesday: November and its last week ended
EXEC_LEVELS = (
    "execution_metrics_hourly",
    "execution_metrics_daily",
    "execution_metrics_weekly",
    "execution_metrics_monthly",
)


@pytest.fixture
def events_env(env, monkeypatch):
    from agg_pipeline.defs.events.assets import EVENT_ASSETS, EVENT_JOBS

    # A two-day lookback from DEC1 reaches back to Monday 23 November: the week of the
    # 23rd and November are whole behind it.
    monkeypatch.setenv("AGG_PIPELINE_LATE_DATA_LOOKBACK_DAYS", "2")
    get_settings.cache_clear()
    env["clock"].at = DEC1
    env["defs"] = dg.Definitions(
        assets=EVENT_ASSETS,
        jobs=EVENT_JOBS,
        resources=env["resources"],
        executor=dg.in_process_executor,
    )
    return env


def insert_executions(engine, rows: list[tuple]) -> None:
    """(id, time, workspace, user, status, duration_ms, credits) rows."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO raw.executions (id, time, workspace_id, user_id, status, "
                "duration_ms, credits) VALUES (:i, :t, :w, :u, :s, :d, :c)"
            ),
            [
                {"i": i, "t": t, "w": w, "u": u, "s": s, "d": d, "c": c}
                for i, t, w, u, s, d, c in rows
            ],
        )


def executions_at(hour: datetime, first_id: int, n: int) -> list[tuple]:
    statuses = ("success", "failed", "cancelled", "success")
    return [
        (
            first_id + k,
            hour + timedelta(minutes=3 + 7 * k),
            f"ws{k % 2}",
            f"user{k % 3}",
            statuses[k % 4],
            100.0 + 37.0 * ((first_id + k) % 11),
            0.5 * (k % 5),
        )
        for k in range(n)
    ]


def assert_execution_metrics_equal_raw(engine) -> None:
    from agg_pipeline.core.windows import Window
    from agg_pipeline.defs.events.levels import LEVELS
    from agg_pipeline_tests.defs import test_event_metrics as em

    everything = Window(datetime(2026, 1, 1, tzinfo=UTC), DEC1)
    for level in (lv for lv in LEVELS if lv.asset in EXEC_LEVELS):
        wanted = em.expected(engine, level, everything, "UTC", DEC1)
        em.assert_frames(em.written(engine, level), wanted, em.keys_of(level))


def test_late_events_heal_every_event_level(events_env):
    """Executions of 24 November (first filled by the healer: the schedules were down),
    then late ones into a past hour: one tick requests each grain's job for exactly the
    partitions over it, and every level equals pandas over raw again."""
    env = events_env
    engine = env["engine"]
    nine = datetime(2026, 11, 24, 9, tzinfo=UTC)
    ten = nine + timedelta(hours=1)
    insert_executions(engine, executions_at(nine, 1, 6) + executions_at(ten, 100, 5))
    assert heal(env) == [
        [
            (("execution_metrics_hourly",), "2026-11-24-09:00", "2026-11-24-10:00"),
            (("execution_metrics_daily",), "2026-11-24", "2026-11-24"),
            (("execution_metrics_weekly",), "2026-11-23", "2026-11-23"),
            (("execution_metrics_monthly",), "2026-11-01", "2026-11-01"),
        ]
    ]
    assert_execution_metrics_equal_raw(engine)
    # Late: into 09:00 (a new workspace, a slow failure) a week after the hour.
    late = [
        (500, nine + timedelta(minutes=50), "ws9", "user7", "failed", 9_000.0, 2.0),
        (501, nine + timedelta(minutes=51), "ws0", "user7", "success", 1.0, 0.0),
    ]
    insert_executions(engine, late)
    ticks = heal(env)
    assert ticks == [
        [
            (("execution_metrics_hourly",), "2026-11-24-09:00", "2026-11-24-09:00"),
            (("execution_metrics_daily",), "2026-11-24", "2026-11-24"),
            (("execution_metrics_weekly",), "2026-11-23", "2026-11-23"),
            (("execution_metrics_monthly",), "2026-11-01", "2026-11-01"),
        ]
    ]
    assert_execution_metrics_equal_raw(engine)
    assert problems(env) == []
