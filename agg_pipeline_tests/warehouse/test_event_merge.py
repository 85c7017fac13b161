"""Event rollups' cheap paths (issue 13): the merge from the level below, and the repeated-id
ledger that lets the duplicate test skip events whose id was seen once.

Real PostgreSQL; every figure against pandas over the raw events (reference_events.judge),
stddev included, on values where a naive sum of squares would be visibly wrong.
"""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from agg_pipeline.config import events as spec
from agg_pipeline.core.windows import Window
from agg_pipeline.warehouse import events as sql
from agg_pipeline.warehouse import late_data
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline_tests import reference_events as ref

UTC_ZONE = ZoneInfo("UTC")
CATALOGUE = """
name: durations
sources:
  executions:
    table: raw.executions
    id_column: id
    columns: [workspace_id, user_id, status, duration_ms, credits]
    reject:
      null_workspace: workspace_id is None
      unknown_status: status is None or status not in ('success', 'failed', 'cancelled')
      nan_duration: isnan(duration_ms) or isinf(duration_ms)
      negative_duration: duration_ms < 0
      nan_credits: isnan(credits) or isinf(credits)
rollups:
  durations:
    source: executions
    dimensions: [workspace_id]
    grains:
      hourly: scratch.durations_hourly
      daily: scratch.durations_daily
      monthly: scratch.durations_monthly
    measures:
      n: {agg: count}
      failed: {agg: count, filter: "status = 'failed'"}
      credits: {agg: sum, column: credits}
      mean: {agg: avg, column: duration_ms}
      sd: {agg: stddev, column: duration_ms}
      sd_failed: {agg: stddev, column: duration_ms, filter: "status = 'failed'"}
      lo: {agg: min, column: duration_ms}
      hi: {agg: max, column: duration_ms}
      p95: {agg: percentile, column: duration_ms, p: 0.95}
"""
MEASURES = ["n", "failed", "credits", "mean", "sd", "sd_failed", "lo", "hi", "p95"]
KEY = {"hourly": "hour_start timestamptz", "daily": "metric_date date",
       "monthly": "month_start date"}  # fmt: skip
START = datetime(2026, 3, 31, tzinfo=UTC)  # two days across a month boundary
OFFSET = 1e6  # durations 1e6 +- a few: squares ~1e12 cancel catastrophically


def _tables(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA IF NOT EXISTS scratch"))
        for grain, key in KEY.items():
            conn.execute(
                sa.text(
                    f"CREATE TABLE scratch.durations_{grain} (workspace_id text NOT NULL, {key} "
                    "NOT NULL, n bigint, failed bigint, credits float8, mean float8, sd float8, "
                    "sd_failed float8, lo float8, hi float8, p95 float8, mean__n bigint, "
                    "sd__n bigint, sd__mean float8, sd__m2 float8, sd_failed__n bigint, "
                    f"sd_failed__mean float8, sd_failed__m2 float8, PRIMARY KEY (workspace_id, "
                    f"{key.split()[0]}))"
                )
            )


def _events(engine: sa.Engine) -> None:
    rng = np.random.default_rng(13)
    n = 3000
    times = [START + timedelta(seconds=float(s)) for s in rng.uniform(0, 2 * 86400, n)]
    status = rng.choice(["success", "failed", "cancelled"], n, p=[0.7, 0.2, 0.1])
    duration = OFFSET + rng.normal(0, 3, n)
    rows = [
        {"i": i, "t": times[i], "w": f"ws-{i % 3}", "u": f"u-{i % 7}", "s": str(status[i]),
         "d": None if i % 50 == 0 else float(duration[i]), "c": float(i % 5) / 10}
        for i in range(n)
    ]  # fmt: skip
    rows += [{**rows[i], "t": rows[i]["t"] + timedelta(minutes=3)} for i in range(0, n, 97)]
    rows.append({**rows[5], "s": "timeout", "i": 99_999})  # a bad one
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO raw.executions VALUES (:i, :t, :w, :u, :s, :d, :c)"), rows
        )


def _expected(engine: sa.Engine, grain: str) -> pd.DataFrame:
    raw = ref.load(engine, "raw.executions")
    good = raw[ref.judge(raw, "raw.executions", datetime.now(UTC)) == ""]
    good = good.assign(bucket=ref.bucket(good["time"], grain, "UTC"))
    rows = []
    for (ws, b), g in good.groupby(["workspace_id", "bucket"]):
        d, fd = g["duration_ms"].dropna(), g[g["status"] == "failed"]["duration_ms"].dropna()
        rows.append(
            {"workspace_id": ws, "bucket": b, "n": len(g),
             "failed": int((g["status"] == "failed").sum()), "credits": g["credits"].sum(),
             "mean": d.mean(), "sd": d.std(ddof=1), "sd_failed": fd.std(ddof=1),
             "lo": d.min(), "hi": d.max(), "p95": d.quantile(0.95)}
        )  # fmt: skip
    return pd.DataFrame(rows).sort_values(["workspace_id", "bucket"]).reset_index(drop=True)


def _written(engine: sa.Engine, level: spec.RollupLevel) -> pd.DataFrame:
    with engine.connect() as conn:
        df = pd.read_sql(
            sa.text(f"SELECT workspace_id, {level.bucket_column} AS bucket, "
                    f"{', '.join(MEASURES)} FROM {level.table}"),
            conn,
        )  # fmt: skip
    if level.grain is spec.Grain.HOURLY:
        df["bucket"] = pd.to_datetime(df["bucket"], utc=True)
    return df.sort_values(["workspace_id", "bucket"]).reset_index(drop=True)


def _assert_matches(actual: pd.DataFrame, wanted: pd.DataFrame) -> None:
    assert len(actual) == len(wanted) > 0
    assert actual["bucket"].tolist() == wanted["bucket"].tolist()
    for col in MEASURES:
        # stddev: relative to the spread, not the 1e6 offset (Chan keeps ~1e-9 here).
        rtol = 1e-8 if col.startswith("sd") else 1e-12
        np.testing.assert_allclose(actual[col].astype(float), wanted[col].astype(float),
                                   rtol=rtol, equal_nan=True, err_msg=col)  # fmt: skip


@pytest.fixture
def durations(engine: sa.Engine) -> dict[str, spec.RollupLevel]:
    _tables(engine)
    _events(engine)
    late_data.drain_sources(engine, START)  # the healer's tick: the raw hours' versions
    catalogue = spec.parse_events_catalogue(CATALOGUE, "durations.yaml")
    return {lv.grain.value: lv for lv in spec.levels(catalogue)}


def test_merged_levels_match_pandas_from_raw_including_stddev(warehouse_url, engine, durations):
    warehouse = WarehouseResource(database_url=warehouse_url)
    hourly, daily, monthly = durations["hourly"], durations["daily"], durations["monthly"]
    hours = sql.write_level(warehouse, hourly, Window(START, START + timedelta(days=2)),
                            UTC_ZONE, 300)  # fmt: skip
    assert hours.merged_chunks == 0 and hours.rejected["duplicate"] == 31
    # Daily over both whole months (a month merges only when all its days were written);
    # the two days with events merge from their hours, the empty ones need no raw either.
    months = Window(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC))
    days = sql.write_level(warehouse, daily, months, UTC_ZONE, 300, finer=hourly)
    assert days.merged_chunks == 2 and days.chunks == 61
    assert days.rejected == hours.rejected  # the raw events were judged for p95
    whole = sql.write_level(warehouse, monthly, months, UTC_ZONE, 300, finer=daily)
    assert whole.merged_chunks == 2
    for grain in ("hourly", "daily", "monthly"):
        _assert_matches(_written(engine, durations[grain]), _expected(engine, grain))

    # The check can fail: a naive sum of squares over the same values is far off.
    raw = ref.load(engine, "raw.executions")
    d = raw["duration_ms"].dropna().to_numpy()
    naive = np.sqrt((np.sum(d * d) - np.sum(d) ** 2 / len(d)) / (len(d) - 1))
    assert abs(naive / np.std(d, ddof=1) - 1) > 1e-6

    # A late event after the hours ran: logged, not drained yet, then drained (its hour's
    # version is newer than the hours'): either way the day is read from raw, not merged.
    day = Window(START, START + timedelta(days=1))
    for late_id, drained in ((123456, False), (123457, True)):
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO raw.executions VALUES "
                        "(:i, '2026-03-31 10:30+00', 'ws-0', 'u', 'failed', 1000004, 1)"),
                {"i": late_id},
            )  # fmt: skip
        if drained:
            late_data.drain_sources(engine, START)
        again = sql.write_level(warehouse, daily, day, UTC_ZONE, 300, finer=hourly)
        assert again.merged_chunks == 0
        _assert_matches(_written(engine, daily), _expected(engine, "daily"))


def test_a_day_without_its_hours_is_read_from_raw(warehouse_url, engine, durations):
    warehouse = WarehouseResource(database_url=warehouse_url)
    # Only the first 12 hours of the 31st ran: the day cannot be merged from them.
    half, two = Window(START, START + timedelta(hours=12)), Window(START, START + timedelta(days=2))
    sql.write_level(warehouse, durations["hourly"], half, UTC_ZONE, 300)
    report = sql.write_level(warehouse, durations["daily"], two, UTC_ZONE, 300,
                             finer=durations["hourly"])  # fmt: skip
    assert report.merged_chunks == 0
    _assert_matches(_written(engine, durations["daily"]), _expected(engine, "daily"))


def _flagged(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.text("SELECT id FROM raw.event_ids_seen WHERE source = 'raw.executions' "
                        "AND repeated")
            ).scalars()
        )  # fmt: skip


def test_repeated_ids_are_flagged_by_statement_update_and_concurrent_writers(warehouse_url, engine):
    row = "INSERT INTO raw.executions VALUES (:i, :t, 'ws', 'u', 'success', 1, 1)"
    t0 = START
    with engine.begin() as conn:
        conn.execute(sa.text(row), [{"i": 1, "t": t0}, {"i": 2, "t": t0}, {"i": 3, "t": t0}])
    assert _flagged(engine) == set()
    with engine.begin() as conn:
        conn.execute(sa.text(row), {"i": 1, "t": t0 + timedelta(hours=5)})  # a later statement
        conn.execute(sa.text("UPDATE raw.executions SET id = 2 WHERE id = 3"))  # id 3 -> 2
        conn.execute(sa.text("UPDATE raw.executions SET credits = 2"))  # no new id: nothing
    assert _flagged(engine) == {"1", "2"}

    # Two transactions insert id 7 at once: neither sees the other's row, the ledger's key
    # makes the second wait for the first and then flag the id.
    first, second = engine.connect(), engine.connect()
    try:
        first.begin()
        first.execute(sa.text(row), {"i": 7, "t": t0})
        done = threading.Event()

        def other() -> None:
            with second.begin():
                second.execute(sa.text(row), {"i": 7, "t": t0 + timedelta(minutes=1)})
            done.set()

        thread = threading.Thread(target=other)
        thread.start()
        assert not done.wait(1.0)  # blocked on the first writer's key
        first.commit()
        thread.join(10)
        assert done.is_set()
    finally:
        first.close()
        second.close()
    assert _flagged(engine) == {"1", "2", "7"}


def test_the_flagged_path_and_the_full_test_agree(warehouse_url, engine, durations):
    warehouse = WarehouseResource(database_url=warehouse_url)
    hourly, window = durations["hourly"], Window(START, START + timedelta(days=2))
    fast = sql.write_level(warehouse, hourly, window, UTC_ZONE, 300)
    rows_fast = _written(engine, hourly)
    with engine.begin() as conn:
        assert sql.ids_flagged(conn, "raw.executions")
        conn.execute(sa.text("ALTER TABLE raw.executions DISABLE TRIGGER log_event_ids_insert"))
        assert not sql.ids_flagged(conn, "raw.executions")
    full = sql.write_level(warehouse, hourly, window, UTC_ZONE, 300)
    assert full.rejected == fast.rejected and full.good_events == fast.good_events
    pd.testing.assert_frame_equal(_written(engine, hourly), rows_fast)
    raw = ref.load(engine, "raw.executions")
    reasons = ref.judge(raw, "raw.executions", datetime.now(UTC)).value_counts()
    assert fast.rejected["duplicate"] == reasons["duplicate"] > 0
    assert date(2026, 3, 31) in set(_written(engine, hourly)["bucket"].dt.date)
