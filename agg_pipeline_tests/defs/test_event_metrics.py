"""Event metrics (issue 13): every figure against pandas over the raw events.

Real PostgreSQL, real Dagster runs: hourly, daily, weekly and monthly partitions across a
month boundary, a DST day and month in Europe/Berlin (writer called with the zone), bad
events counted by reason, idempotency, the three analytics views.
"""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from agg_pipeline.config import events as spec
from agg_pipeline.core.windows import Window, day_window, local_midnight
from agg_pipeline.defs.events import assets as event_assets
from agg_pipeline.demo import activity
from agg_pipeline.warehouse import events as sql
from agg_pipeline.warehouse import late_data
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline_tests import reference_events as ref

REL = 1e-9
CATALOGUE = spec.load_events_catalogue("analytics")
LEVELS = {lv.asset: lv for lv in spec.levels(CATALOGUE)}
ASSETS = {a.key.to_user_string(): a for a in event_assets.ROLLUPS}
EXEC_COLUMNS = [
    "execution_count",
    "success_count",
    "failed_count",
    "cancelled_count",
    "success_rate_pct",
    "avg_duration_ms",
    "min_duration_ms",
    "max_duration_ms",
    "p50_duration_ms",
    "p95_duration_ms",
    "credits_used",
    "distinct_users",
]


# ---------------------------------------------------------------------------------------
# The catalogue and the filter grammar
# ---------------------------------------------------------------------------------------


def test_shipped_catalogue_declares_the_seed_tables():
    assert set(LEVELS) == {
        "execution_metrics_hourly",
        "execution_metrics_daily",
        "execution_metrics_weekly",
        "execution_metrics_monthly",
        "user_activity_hourly",
        "user_activity_daily",
        "credit_consumption_hourly",
        "credit_consumption_daily",
        "credit_consumption_monthly",
    }
    assert list(LEVELS["execution_metrics_daily"].measures) == EXEC_COLUMNS
    assert "active_hours" not in LEVELS["user_activity_hourly"].measures


BASE = CATALOGUE.model_dump(mode="json")


def _broken(path: list, value) -> dict:
    data = copy.deepcopy(BASE)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (
            ["rollups", "execution_metrics", "measures", "success_count", "filter"],
            "__import__('os').system('x')",
            "rollups.execution_metrics.measures.success_count.filter: unknown function",
        ),
        (
            ["rollups", "execution_metrics", "measures", "avg_duration_ms", "column"],
            "nope",
            "rollups.execution_metrics.measures.avg_duration_ms.column: unknown column 'nope'",
        ),
        (
            ["rollups", "execution_metrics", "measures", "p50_duration_ms", "p"],
            None,
            "rollups.execution_metrics.measures.p50_duration_ms",
        ),
        (["rollups", "user_activity", "source"], "clicks", "unknown source 'clicks'"),
        (
            ["sources", "executions", "reject", "unknown_status"],
            "status ~ 'x'",
            "sources.executions: reject.unknown_status: not a valid expression",
        ),
        (["sources", "executions", "table"], "raw.executions; drop", "sources.executions.table"),
        (["rollups", "user_activity", "grains", "hourly"], "analytics.execution_metrics_daily",
         "also used by"),
    ],
)  # fmt: skip
def test_a_bad_key_fails_at_load_naming_it(tmp_path, path, value, named):
    import yaml

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_broken(path, value)))
    with pytest.raises(spec.EventsCatalogueError) as err:
        spec.load_events_catalogue(str(bad))
    assert named in str(err.value) and "bad.yaml" in str(err.value), str(err.value)


def test_a_bad_events_catalogue_fails_the_definitions_load(tmp_path):
    import subprocess
    import sys

    import yaml

    bad = tmp_path / "events.yaml"
    path = ["rollups", "credit_consumption", "measures", "credits", "agg"]
    bad.write_text(yaml.safe_dump(_broken(path, "median")))
    proc = subprocess.run(
        [sys.executable, "-c", "import agg_pipeline.definitions"],
        env={"AGG_PIPELINE_EVENTS_CATALOGUE": str(bad), "PATH": ""},
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "rollups.credit_consumption.measures.credits.agg" in proc.stderr, proc.stderr[-500:]
    assert "events.yaml" in proc.stderr


def test_filters_bind_values_and_refuse_anything_else():
    text = "status = 'a=b' and not (x in (1, -2.5) or y is None)"
    f = spec.compile_filter(text, {"status", "x", "y"}, "p")
    assert f.sql == '(("status" = :p_0) AND (NOT (("x" IN (:p_1, :p_2)) OR ("y" IS NULL))))'
    assert f.params == {"p_0": "a=b", "p_1": 1, "p_2": -2.5}
    for bad in ("status == x", "status.upper() == 'A'", "1 == 1", "status < 'a' < 'b'", "z > 1"):
        with pytest.raises(spec.FilterError):
            spec.compile_filter(bad, {"status"}, "p")


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def inject_bad(engine: sa.Engine, at: datetime) -> None:
    """One of each bad event (and two valid edge cases) around ``at`` (an hour start)."""
    m = timedelta(minutes=1)
    rows = [
        # (id, time, workspace, user, status, duration, credits)
        (900001, at - m, "ws-000", "user-000-00", "success", 100.0, 1.0),  # counts
        (900001, at + m, "ws-000", "user-000-00", "success", 100.0, 1.0),  # dup, next hour
        (900002, at + 2 * m, "ws-001", "user-001-00", "failed", 50.0, 0.5),
        (900002, at + 2 * m, "ws-001", "user-001-00", "failed", 50.0, 0.5),  # exact copy
        (900003, at + 3 * m, "ws-001", "user-001-01", "timeout", 10.0, 0.1),  # unknown
        (900004, at + 4 * m, "ws-001", "user-001-01", None, 10.0, 0.1),  # unknown (NULL)
        (900005, at + 5 * m, "ws-002", "user-002-00", "success", -5.0, 0.1),  # negative
        (900006, at + 6 * m, "ws-002", "user-002-00", "success", float("nan"), 0.1),  # NaN
        (900007, at + 7 * m, None, "user-002-00", "success", 10.0, 0.1),  # NULL workspace
        (900008, at + 8 * m, "ws-002", "user-002-01", "cancelled", None, None),  # valid
        (900009, at + 9 * m, "ws-002", "user-002-01", "success", 10.0, float("inf")),  # credits
    ]
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO raw.executions VALUES "
                "(:i, :t, :w, :u, :s, CAST(:d AS float8), CAST(:c AS float8))"
            ),
            [dict(zip("itwusdc", r, strict=True)) for r in rows],
        )
        conn.execute(
            sa.text("INSERT INTO raw.user_activity VALUES (:t, :w, :u, 'login')"),
            [
                {"t": at + m, "w": None, "u": "user-000-00"},
                {"t": at + m, "w": "ws-000", "u": None},
            ],
        )
        conn.execute(
            sa.text("INSERT INTO raw.credit_usage VALUES (:t, 'ws-000', 'user-000-00', :c)"),
            [{"t": at + m, "c": float("nan")}, {"t": at + 2 * m, "c": float("-inf")}],
        )


def seed(engine: sa.Engine, start: datetime, days: float, bad_at: datetime) -> None:
    events = activity.simulate(
        start, days, workspaces=3, users_per_workspace=3, executions_per_hour=6, seed=7
    )
    activity.write(engine, events)
    inject_bad(engine, bad_at)


def good_events(engine: sa.Engine, table: str, window: Window, now: datetime) -> pd.DataFrame:
    raw = ref.load(engine, table)
    reason = ref.judge(raw, table, now)
    inside = (raw["time"] >= pd.Timestamp(window.start)) & (raw["time"] < pd.Timestamp(window.end))
    return raw[inside & (reason == "")]


def reasons(engine: sa.Engine, table: str, window: Window, now: datetime) -> dict[str, int]:
    raw = ref.load(engine, table)
    reason = ref.judge(raw, table, now)
    inside = (raw["time"] >= pd.Timestamp(window.start)) & (raw["time"] < pd.Timestamp(window.end))
    return {k: int(v) for k, v in reason[inside & (reason != "")].value_counts().items()}


def written(engine: sa.Engine, level: spec.RollupLevel) -> pd.DataFrame:
    cols = [*level.spec.dimensions, level.bucket_column, *level.measures]
    with engine.connect() as conn:
        df = pd.read_sql(sa.text(f"SELECT {', '.join(cols)} FROM {level.table}"), conn)
    return df.rename(columns={level.bucket_column: "bucket"})


def expected(engine, level: spec.RollupLevel, window: Window, zone: str, now) -> pd.DataFrame:
    good = good_events(engine, level.source.table, window, now)
    compute = {
        "execution_metrics": ref.executions,
        "user_activity": ref.user_activity,
        "credit_consumption": ref.credit_consumption,
    }[level.rollup]
    return compute(good, level.grain.value, zone)


def assert_frames(actual: pd.DataFrame, wanted: pd.DataFrame, keys: list[str]) -> None:
    assert len(actual) == len(wanted) > 0
    if "bucket" in keys and isinstance(wanted["bucket"].iloc[0], pd.Timestamp):
        actual = actual.assign(bucket=pd.to_datetime(actual["bucket"], utc=True))
    a = actual.sort_values(keys).reset_index(drop=True)
    w = wanted[list(actual.columns)].sort_values(keys).reset_index(drop=True)
    for col in actual.columns:
        if col in keys:
            assert a[col].tolist() == w[col].tolist(), col
        else:
            np.testing.assert_allclose(
                a[col].astype(float), w[col].astype(float), rtol=REL, equal_nan=True, err_msg=col
            )


def keys_of(level: spec.RollupLevel) -> list[str]:
    return [*level.spec.dimensions, "bucket"]


def run(url: str, assets: list[str], first: str, last: str, instance=None):
    return dg.materialize(
        [ASSETS[a] for a in assets],
        instance=instance,
        resources={"warehouse": WarehouseResource(database_url=url)},
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        },
    )


# ---------------------------------------------------------------------------------------
# Through Dagster (UTC partitions), across a month boundary
# ---------------------------------------------------------------------------------------

START = datetime(2026, 3, 30, tzinfo=UTC)  # a Monday; March ends two days later
BAD_AT = datetime(2026, 3, 31, 11, tzinfo=UTC)
GRAIN_RUNS = {
    "hourly": ("2026-03-30-00:00", "2026-04-01-23:00"),
    "daily": ("2026-03-01", "2026-04-30"),  # whole months: the weeks and months merge
    "weekly": ("2026-03-30", "2026-03-30"),
    "monthly": ("2026-03-01", "2026-04-01"),
}


def test_every_level_matches_pandas_and_is_idempotent(warehouse_url, engine):
    seed(engine, START, 3, BAD_AT)
    late_data.drain_sources(engine, START)  # the healer's tick: the raw hours' versions
    now = datetime.now(UTC)
    results = {}
    for grain, (first, last) in GRAIN_RUNS.items():
        names = [a for a, lv in LEVELS.items() if lv.grain.value == grain]
        results[grain] = run(warehouse_url, names, first, last)
        assert results[grain].success
    whole = Window(START, datetime(2026, 5, 1, tzinfo=UTC))
    for level in LEVELS.values():
        assert_frames(written(engine, level), expected(engine, level, whole, "UTC", now),
                      keys_of(level))  # fmt: skip
    # The levels add up (each coarser run came after the finer one).
    for result in results.values():
        evaluations = result.get_asset_check_evaluations()
        assert all(e.passed for e in evaluations)
    assert len(results["monthly"].get_asset_check_evaluations()) == 2
    # Bad events: the daily run's counts by reason are pandas' over the run's window.
    window = Window(START, datetime(2026, 4, 2, tzinfo=UTC))
    meta = results["daily"].asset_materializations_for_node("execution_metrics_daily")[0].metadata
    by_reason = {k: v for k, v in meta["rejected_by_reason"].value.items() if v}
    assert by_reason == reasons(engine, "raw.executions", window, now)
    assert set(by_reason) == {
        "duplicate",
        "unknown_status",
        "negative_duration",
        "nan_duration",
        "null_workspace",
        "nan_credits",
    }
    assert by_reason["duplicate"] >= 2  # the simulator's redeliveries and ours
    # credit_consumption_daily merges every figure from the hours (no raw read, nothing
    # judged): its bad events are the hourly run's.
    judged_by = (("raw.user_activity", "daily", "user_activity_daily"),
                 ("raw.credit_usage", "hourly", "credit_consumption_hourly"))  # fmt: skip
    for table, grain, node in judged_by:
        meta = results[grain].asset_materializations_for_node(node)[0].metadata
        got = {k: v for k, v in meta["rejected_by_reason"].value.items() if v}
        hours = Window(START, datetime(2026, 4, 2, tzinfo=UTC))
        assert got == reasons(engine, table, hours, now) != {}
    # The coarser levels merged from the one below where it was written and current: the
    # days with their hours (the 3 days of events), every week and month.
    for grain in ("daily", "weekly", "monthly"):
        for mat in results[grain].get_asset_materialization_events():
            meta = mat.materialization.metadata
            merged = 3 if grain == "daily" else meta["chunks"].value
            assert meta["merged_chunks"].value == merged, mat.asset_key
    credit = results["daily"].asset_materializations_for_node("credit_consumption_daily")
    assert credit[0].metadata["events_read"].value == 0
    # Idempotent: the same runs again leave exactly the same rows.
    before = {name: written(engine, lv) for name, lv in LEVELS.items()}
    again = run(warehouse_url, [a for a, lv in LEVELS.items() if lv.grain.value == "daily"],
                *GRAIN_RUNS["daily"])  # fmt: skip
    meta = again.asset_materializations_for_node("execution_metrics_daily")[0].metadata
    assert meta["rows_replaced"].value == meta["rows_written"].value > 0
    for name, level in LEVELS.items():
        pd.testing.assert_frame_equal(
            written(engine, level).sort_values(keys_of(level)).reset_index(drop=True),
            before[name].sort_values(keys_of(level)).reset_index(drop=True),
        )

    # A late event: the daily re-run takes it in, and its check says the hours are behind
    # until they are re-run too.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO raw.executions VALUES "
                "(990001, '2026-03-31 10:30+00', 'ws-000', 'late', 'success', 7, 1)"
            )
        )
    # The healer's tick records the raw hour's change: the hours under the day are older
    # than it, so the daily run reads the raw events instead of merging them.
    late_data.drain_sources(engine, START)
    daily = [a for a, lv in LEVELS.items() if lv.grain.value == "daily"]
    stale = run(warehouse_url, daily, *GRAIN_RUNS["daily"]).get_asset_check_evaluations()
    behind = [e for e in stale if e.asset_key.to_user_string() == "execution_metrics_daily"]
    assert not behind[0].passed and behind[0].metadata["keys_mismatched"].value == 1
    hourly = [a for a, lv in LEVELS.items() if lv.grain.value == "hourly"]
    assert run(warehouse_url, hourly, "2026-03-31-10:00", "2026-03-31-10:00").success
    healed_run = run(warehouse_url, daily, *GRAIN_RUNS["daily"])
    assert all(e.passed for e in healed_run.get_asset_check_evaluations())
    meta = healed_run.asset_materializations_for_node("execution_metrics_daily")[0].metadata
    assert meta["merged_chunks"].value == 3  # the days with hours: current again
    for name in ("execution_metrics_hourly", "execution_metrics_daily"):
        level = LEVELS[name]
        assert_frames(written(engine, level), expected(engine, level, whole, "UTC", now),
                      keys_of(level))  # fmt: skip


# ---------------------------------------------------------------------------------------
# Local days and months: Europe/Berlin's spring-forward day and the month after it
# ---------------------------------------------------------------------------------------


def test_dst_day_and_local_month_match_pandas(warehouse_url, engine):
    zone = ZoneInfo("Europe/Berlin")
    seed(engine, datetime(2026, 3, 28, 22, tzinfo=UTC), 4.5, datetime(2026, 3, 31, 21, tzinfo=UTC))
    now = datetime.now(UTC)
    warehouse = WarehouseResource(database_url=warehouse_url)
    dst_day = day_window(date(2026, 3, 29), zone)
    assert dst_day.seconds == 23 * 3600
    days = Window(dst_day.start, local_midnight(date(2026, 4, 2), zone))
    week, week_end = local_midnight(date(2026, 3, 30), zone), local_midnight(date(2026, 4, 6), zone)
    months = Window(local_midnight(date(2026, 3, 1), zone), local_midnight(date(2026, 5, 1), zone))
    for name, window in (
        ("execution_metrics_hourly", dst_day),
        ("user_activity_hourly", dst_day),
        ("execution_metrics_daily", days),
        ("user_activity_daily", days),
        ("credit_consumption_daily", days),
        ("execution_metrics_weekly", Window(week, week_end)),
        ("execution_metrics_monthly", months),
        ("credit_consumption_monthly", months),
    ):
        level = LEVELS[name]
        report = sql.write_level(warehouse, level, window, zone, 300)
        want = expected(engine, level, window, "Europe/Berlin", now)
        assert_frames(written(engine, level), want, keys_of(level))
        assert report.good_events == len(good_events(engine, level.source.table, window, now))
    hours = pd.to_datetime(written(engine, LEVELS["execution_metrics_hourly"])["bucket"], utc=True)
    assert hours.min() >= dst_day.start and hours.max() < dst_day.end  # 23 local hours at most
    assert 12 < hours.nunique() <= 23
    daily = written(engine, LEVELS["user_activity_daily"])
    assert daily[daily["bucket"] == date(2026, 3, 29)]["active_hours"].max() <= 23
    monthly = written(engine, LEVELS["execution_metrics_monthly"])
    assert set(monthly["bucket"]) == {date(2026, 3, 1), date(2026, 4, 1)}


def test_future_events_are_counted_not_rolled_up(warehouse_url, engine):
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO raw.executions VALUES (:i, :t, 'ws-9', 'u', 'success', 1.0, 1.0)"),
            [
                {"i": 1, "t": now - timedelta(minutes=10)},
                {"i": 2, "t": now + timedelta(minutes=2)},  # within the 300 s tolerance
                {"i": 3, "t": now + timedelta(days=1)},
            ],
        )
    window = Window(hour - timedelta(hours=1), hour + timedelta(days=2))
    report = sql.write_level(
        WarehouseResource(database_url=warehouse_url),
        LEVELS["execution_metrics_hourly"],
        window,
        ZoneInfo("UTC"),
        300,
    )
    assert dict(report.rejected) == {"future": 1}
    assert report.good_events == 2 and report.chunks == 3


# ---------------------------------------------------------------------------------------
# The analytics views
# ---------------------------------------------------------------------------------------


def test_analytics_views_match_pandas(warehouse_url, engine):
    today = datetime.now(UTC).date()
    start = datetime.combine(today - timedelta(days=2), datetime.min.time(), tzinfo=UTC)
    seed(engine, start, 2, start + timedelta(hours=30))
    now = datetime.now(UTC)
    warehouse = WarehouseResource(database_url=warehouse_url)
    window = Window(start, start + timedelta(days=2))
    for name in ("execution_metrics_daily", "user_activity_daily", "credit_consumption_daily"):
        sql.write_level(warehouse, LEVELS[name], window, ZoneInfo("UTC"), 300)
    resources = {"warehouse": warehouse}
    first = dg.materialize([event_assets.analytics_views], resources=resources)
    second = dg.materialize([event_assets.analytics_views], resources=resources)
    views = second.asset_materializations_for_node("analytics_views")[0].metadata["views"].value
    assert first.success and all(v["concurrently"] for v in views.values())

    execs = good_events(engine, "raw.executions", window, now)
    acts = good_events(engine, "raw.user_activity", window, now)
    credits = good_events(engine, "raw.credit_usage", window, now)
    with engine.connect() as conn:
        daily = pd.read_sql(sa.text("SELECT * FROM analytics.mv_daily_user_metrics"), conn)
        hourly = pd.read_sql(sa.text("SELECT * FROM analytics.mv_hourly_execution_stats"), conn)
        summary = pd.read_sql(sa.text("SELECT * FROM analytics.mv_workspace_summary"), conn)

    day = lambda df: df.assign(metric_date=df["time"].dt.date)  # noqa: E731
    want = (
        day(acts).groupby(["metric_date", "workspace_id"])
        .agg(active_users=("user_id", "nunique"), events=("action", "size"))
        .join(day(execs).groupby(["metric_date", "workspace_id"]).size().rename("executions"),
              how="outer")
        .join(day(credits).groupby(["metric_date", "workspace_id"])["credits"].sum(), how="outer")
        .fillna(0).reset_index()
    )  # fmt: skip
    assert_frames(daily, want, ["metric_date", "workspace_id"])

    by_hour = execs.assign(hour_start=execs["time"].dt.floor("h")).groupby("hour_start")
    want = pd.DataFrame(
        {
            "executions": by_hour.size(),
            "success_rate_pct": by_hour["status"].apply(lambda s: 100.0 * (s == "success").mean()),
            "p95_duration_ms": by_hour["duration_ms"].quantile(0.95),
        }
    ).reset_index()
    hourly = hourly.assign(hour_start=pd.to_datetime(hourly["hour_start"], utc=True))
    assert_frames(hourly, want, ["hour_start"])

    g = execs.groupby("workspace_id")
    want = pd.DataFrame(
        {
            "executions": g.size(),
            "success_rate_pct": g["status"].apply(lambda s: 100.0 * (s == "success").mean()),
            "credits": credits.groupby("workspace_id")["credits"].sum(),
            "active_users": acts.groupby("workspace_id")["user_id"].nunique(),
        }
    ).reset_index()
    assert_frames(summary.drop(columns="last_activity_at"), want, ["workspace_id"])
    last = acts.groupby("workspace_id")["time"].max()
    got = summary.set_index("workspace_id")["last_activity_at"]
    assert {k: pd.Timestamp(v) for k, v in got.items()} == last.to_dict()


# ---------------------------------------------------------------------------------------
# Schedules: the old Celery beat times, and their switches (old flag names too)
# ---------------------------------------------------------------------------------------


SCHEDULE_TICKS = [
    ("events_hourly_at_05", datetime(2026, 11, 20, 0, 5, tzinfo=UTC), "2026-11-19-23:00"),
    ("events_daily_at_0100", datetime(2026, 11, 20, 1, 0, tzinfo=UTC), "2026-11-19"),
    ("events_weekly_monday_0200", datetime(2026, 11, 23, 2, 0, tzinfo=UTC), "2026-11-16"),
    ("events_monthly_first_0300", datetime(2026, 11, 1, 3, 0, tzinfo=UTC), "2026-10-01"),
    ("events_monthly_first_0300", datetime(2026, 1, 1, 3, 0, tzinfo=UTC), "2025-12-01"),
]


def test_event_schedules_request_the_previous_period(dagster_instance):
    from agg_pipeline.definitions import defs

    repo = defs.get_repository_def()
    for name, tick, partition in SCHEDULE_TICKS:  # one instance for all (each costs ~2 s)
        context = dg.build_schedule_context(
            instance=dagster_instance, scheduled_execution_time=tick, repository_def=repo
        )
        result = repo.get_schedule_def(name).evaluate_tick(context)
        assert [r.partition_key for r in result.run_requests] == [partition], name


def test_switches_and_the_old_flag_names(monkeypatch):
    from agg_pipeline.config.settings import env_name, load_settings

    monkeypatch.setenv("MONTHLY_ROLLUP_ENABLED", "false")
    monkeypatch.setenv("HOURLY_ROLLUP_ENABLED", "false")
    monkeypatch.setenv("AGG_PIPELINE_SCHEDULE_EVENTS_HOURLY", "true")  # the new name wins
    monkeypatch.setenv("AGG_PIPELINE_SCHEDULE_ANALYTICS_VIEWS", "false")
    s = load_settings()
    assert not s.schedule_events_monthly and s.schedule_events_hourly
    assert s.schedule_events_daily and s.schedule_events_weekly
    assert not s.schedule_analytics_views
    assert env_name("schedule_events_weekly") == "AGG_PIPELINE_SCHEDULE_EVENTS_WEEKLY"
    # The schedules follow the settings (their status is fixed when the definitions load).
    import subprocess
    import sys

    code = (
        "from agg_pipeline.definitions import defs\n"
        "r = defs.get_repository_def()\n"
        "print(sorted(s.name for s in r.schedule_defs if s.default_status.value == 'STOPPED'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": "", "MONTHLY_ROLLUP_ENABLED": "false",
             "AGG_PIPELINE_SCHEDULE_ANALYTICS_VIEWS": "0"},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.strip() == "['analytics_views_every_15_minutes', 'events_monthly_first_0300']"


def test_seed_activity_cli(warehouse_url, engine, capsys):
    from agg_pipeline import cli

    assert cli.main(["seed-activity", "--days", "1", "--workspaces", "2", "--users", "2"]) == 0
    assert "rows to raw.executions" in capsys.readouterr().out
    with engine.connect() as conn:
        n, ws, statuses = conn.execute(
            sa.text("SELECT count(*), count(DISTINCT workspace_id), "
                    "array_agg(DISTINCT status ORDER BY status) FROM raw.executions")
        ).one()  # fmt: skip
        users = conn.execute(sa.text("SELECT count(*) FROM raw.user_activity")).scalar_one()
    assert n > 100 and ws == 2 and statuses == ["cancelled", "failed", "success"] and users > 0
    # --if-empty adds nothing the second time
    assert cli.main(["seed-activity", "--days", "1", "--if-empty"]) == 0
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM raw.executions")).scalar_one() == n


# ---------------------------------------------------------------------------------------
# Retention: raw events only for days every level over them ran; hourly rows by age
# ---------------------------------------------------------------------------------------


def test_retention_keeps_what_no_level_holds(warehouse_url, engine, dagster_instance):
    from agg_pipeline.defs.operations.maintenance import retention_cleanup

    d0 = datetime.now(UTC).date() - timedelta(days=100)
    start = datetime.combine(d0, datetime.min.time(), tzinfo=UTC)
    seed(engine, start, 2, start + timedelta(hours=12))
    with engine.begin() as conn:
        # A copy on day 1 of a day-0 id: the ledger must keep that id after day 0 goes.
        kept_id = conn.execute(
            sa.text(
                "INSERT INTO raw.executions (id, time, workspace_id, user_id, status, "
                "duration_ms, credits) SELECT id, time + interval '1 day', workspace_id, "
                "user_id, status, duration_ms, credits FROM raw.executions "
                "WHERE time < :d1 ORDER BY id LIMIT 1 RETURNING id::text"
            ),
            {"d1": start + timedelta(days=1)},
        ).scalar_one()
    with engine.connect() as conn:
        before = pd.read_sql(sa.text("SELECT id, time FROM raw.executions"), conn)
        activity_rows = conn.execute(sa.text("SELECT count(*) FROM raw.user_activity")).scalar()
    # Every execution level over day 0; day 1 has its daily row but not its hours.
    h0, day, week = f"{d0}-00:00", d0.isoformat(), d0 - timedelta(days=d0.weekday())
    d1 = (d0 + timedelta(days=1)).isoformat()
    for names, first, last in (
        (["execution_metrics_hourly"], h0, f"{d0}-23:00"),
        (["execution_metrics_daily"], day, d1),
        (["execution_metrics_weekly"], week.isoformat(), week.isoformat()),
        (["execution_metrics_monthly"], f"{d0:%Y-%m}-01", f"{d0:%Y-%m}-01"),
    ):
        assert run(warehouse_url, names, first, last, dagster_instance).success
    if d0.month != (d0 + timedelta(days=1)).month:  # day 1 in the next month: cover it too
        nxt = f"{d0 + timedelta(days=1):%Y-%m}-01"
        assert run(warehouse_url, ["execution_metrics_monthly"], nxt, nxt, dagster_instance).success
    daily_before = written(engine, LEVELS["execution_metrics_daily"])

    result = retention_cleanup.execute_in_process(
        resources={"warehouse": WarehouseResource(database_url=warehouse_url)},
        run_config={"ops": {"retention_cleanup_op": {"config": {"analytics_hourly_days": 95}}}},
        instance=dagster_instance,
    )
    summary = result.output_for_node("retention_cleanup_op")
    with engine.connect() as conn:
        left = pd.read_sql(sa.text("SELECT id, time FROM raw.executions"), conn)
        ledger = set(
            conn.execute(
                sa.text("SELECT id FROM raw.event_ids_seen WHERE source = 'raw.executions'")
            ).scalars()
        )
        after = left["time"]
        hourly = conn.execute(
            sa.text("SELECT count(*) FROM analytics.execution_metrics_hourly")
        ).scalar()
        activity_after = conn.execute(sa.text("SELECT count(*) FROM raw.user_activity")).scalar()
    day_of = lambda t: pd.to_datetime(t, utc=True).dt.date  # noqa: E731
    assert set(day_of(after)) == {d0 + timedelta(days=1)}  # day 0 released, day 1 kept
    before_day = day_of(before["time"])
    assert summary["raw.executions"]["rows"] == int((before_day == d0).sum())
    # The ledger forgot exactly the released ids with no copy left (not the kept one).
    assert ledger == set(left["id"].astype(str)) and kept_id in ledger
    released = set(before.loc[before_day == d0, "id"].astype(str))
    assert summary["raw.executions"]["ids_forgotten"] == len(released - {kept_id}) > 0
    assert "not yet" in summary["raw.executions"]["days_kept"][d1]
    assert activity_after == activity_rows  # no level over user activity ran: all kept
    assert hourly == 0  # 100 days old, 95 kept
    # A re-run over the released day keeps its rows (they counted the whole day).
    again = run(warehouse_url, ["execution_metrics_daily"], day, day, dagster_instance)
    notes = again.asset_materializations_for_node("execution_metrics_daily")[0].metadata
    assert "raw events released" in notes["notes"].value
    keys = keys_of(LEVELS["execution_metrics_daily"])
    pd.testing.assert_frame_equal(
        written(engine, LEVELS["execution_metrics_daily"]).sort_values(keys).reset_index(drop=True),
        daily_before.sort_values(keys).reset_index(drop=True),
    )


def test_two_runs_of_one_window_at_once_leave_one_correct_row_per_key(warehouse_url, engine):
    from concurrent.futures import ThreadPoolExecutor

    seed(engine, START, 2, BAD_AT)
    now = datetime.now(UTC)
    level = LEVELS["execution_metrics_daily"]
    window = Window(START, START + timedelta(days=2))
    warehouse = WarehouseResource(database_url=warehouse_url)
    with ThreadPoolExecutor(2) as pool:
        reports = list(
            pool.map(lambda _: sql.write_level(warehouse, level, window, ZoneInfo("UTC"), 300),
                     range(2))
        )  # fmt: skip
    assert sorted(r.rows_deleted for r in reports)[0] == 0  # one ran first, the other replaced
    assert_frames(written(engine, level), expected(engine, level, window, "UTC", now),
                  keys_of(level))  # fmt: skip
