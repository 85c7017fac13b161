"""rollup_monthly: local calendar months merged from daily, against pandas over raw.

Two small cases (a few devices, one reading per ~100 s): through Dagster across the
January / February boundary (UTC partitions), and through the writer in Europe/Berlin
across the spring-forward day (a 23-hour day) and the March / April boundary.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from agg_pipeline.config.settings import Settings, get_settings
from agg_pipeline.core.windows import Window, local_midnight
from agg_pipeline.defs import automation
from agg_pipeline.defs.assets import daily_rollup_and_conditions, rollup_monthly
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse import consistency, healing
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline.warehouse.writes import readings as writers
from agg_pipeline_tests import data, reference
from agg_pipeline_tests.sources.test_dst_and_input import BERLIN, context
from agg_pipeline_tests.warehouse.test_rollups import CATALOGUE, assert_matches, run_hours, table

MONTHLY = "bi.monthly_sensor_agg"


def expected_months(engine: sa.Engine, zone: str) -> pd.DataFrame:
    """count, mean, min, max, stddev, median per (device, field, local month) from raw."""
    raw = reference.load_raw(engine, datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC))
    valid = reference.valid_readings(raw, CATALOGUE, datetime.now(UTC))
    month = reference.local_day(valid["time"], zone).map(lambda d: d.replace(day=1))
    return reference.grouped_stats(valid, month)


def monthly_rows(engine: sa.Engine) -> pd.DataFrame:
    got = table(engine, MONTHLY, "month_start")
    return got.sort_values(["device", "field", "bucket"]).reset_index(drop=True)


def _range(first: str, last: str) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": first,
        "dagster/asset_partition_range_end": last,
    }


def test_monthly_through_dagster_across_a_month_boundary(warehouse_url, engine, monkeypatch):
    data.seed(engine, start=datetime(2026, 1, 31, tzinfo=UTC), days=2, devices=2, hz=0.01)
    data.insert(engine, data.bad_rows(datetime(2026, 1, 31, 20, tzinfo=UTC)))
    assert run_hours(warehouse_url, "2026-01-31-00:00", "2026-02-01-23:00").success
    resources = {
        "warehouse": WarehouseResource(database_url=warehouse_url),
        "influx": InfluxResource(),
    }
    daily = dg.materialize(
        [daily_rollup_and_conditions], resources=resources, tags=_range("2026-01-31", "2026-02-01")
    )
    assert daily.success

    def run_months() -> dg.ExecuteInProcessResult:
        result = dg.materialize(
            [rollup_monthly], resources=resources, tags=_range("2026-01-01", "2026-02-01")
        )
        assert result.success
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks == {
            "stats_valid": True,
            "matches_daily_sensor_agg": True,
            "consistent_with_parents": True,  # derived from the hierarchy since issue 12
        }
        return result

    result = run_months()
    first = monthly_rows(engine)
    want = expected_months(engine, "UTC")
    assert set(want["bucket"]) == {date(2026, 1, 1), date(2026, 2, 1)}
    assert_matches(first, want)
    # Each month's own figures (defs/common.py, keyed as a local date like every level).
    mats = {
        m.partition: m.metadata for m in result.asset_materializations_for_node("rollup_monthly")
    }
    for key, md in mats.items():
        assert md["partition_rows_written"].value == (want["bucket"].astype(str) == key).sum()

    run_months()  # idempotent: the same rows, not twice as many
    pd.testing.assert_frame_equal(monthly_rows(engine), first)

    # The median off: every other figure unchanged, median NULL.
    monkeypatch.setenv("AGG_PIPELINE_MONTHLY_MEDIAN", "false")
    get_settings.cache_clear()
    run_months()
    off = monthly_rows(engine)
    assert off["median_value"].isna().all()
    assert_matches(off, want, median=False)


def test_monthly_in_berlin_across_dst_and_a_month_boundary(warehouse_url, engine):
    zone = ZoneInfo(BERLIN)
    # 29 March 01:00 to 1 April 13:00 local: spring forward on 30 March, then April.
    data.seed(engine, start=datetime(2025, 3, 29, tzinfo=UTC), days=3.5, devices=2, hz=0.01)
    ctx = context(warehouse_url, timezone=BERLIN)
    days = Window(local_midnight(date(2025, 3, 29), zone), local_midnight(date(2025, 4, 2), zone))
    writers.write_readings_1m(ctx, days)
    writers.write_merged_level(ctx, writers.LEVEL_HOURLY, days)
    writers.write_daily(ctx, days)
    months = Window(local_midnight(date(2025, 3, 1), zone), local_midnight(date(2025, 5, 1), zone))
    report = writers.write_merged_level(ctx, writers.LEVEL_MONTHLY, months)
    assert report.chunks == 2  # one per month, never a month cut in two
    first = monthly_rows(engine)
    want = expected_months(engine, BERLIN)
    assert set(want["bucket"]) == {date(2025, 3, 1), date(2025, 4, 1)}
    assert_matches(first, want)
    assert report.median_status["exact"] == len(want)

    again = writers.write_merged_level(ctx, writers.LEVEL_MONTHLY, months)
    assert again.rows_deleted == again.rows_written == len(want)
    pd.testing.assert_frame_equal(monthly_rows(engine), first)


def test_monthly_partitions_for_the_healer_and_the_schedule():
    zone = ZoneInfo(BERLIN)
    march = local_midnight(date(2025, 3, 1), zone)
    april = local_midnight(date(2025, 4, 1), zone)
    # March 2025 in Berlin is 31 days minus the hour lost on the 30th.
    assert healing.end_of("monthly", march, zone) == april
    assert (april.astimezone(UTC) - march.astimezone(UTC)).total_seconds() == (31 * 24 - 1) * 3600
    origin = local_midnight(date(2025, 1, 15), zone)  # the month holding it is a partition
    got = healing.partitions_between("monthly", origin, april + timedelta(hours=1), origin, zone)
    assert got == [local_midnight(date(2025, m, 1), zone) for m in (1, 2, 3, 4)]
    assert automation.previous_month(datetime(2026, 3, 1, 3, 30, tzinfo=UTC)) == "2026-02-01"
    assert automation.previous_month(datetime(2026, 1, 1, 3, 30, tzinfo=UTC)) == "2025-12-01"


def test_monthly_consistency_against_its_days(warehouse_url, engine):
    """consistency.py's pair and NULL-median query for the monthly level come from the
    registry: a month agrees with its days, a changed count or a lost median is found."""
    zone = ZoneInfo(BERLIN)
    data.seed(engine, start=datetime(2025, 3, 30, tzinfo=UTC), days=1, devices=1, hz=0.01)
    ctx = context(warehouse_url, timezone=BERLIN)
    days = Window(local_midnight(date(2025, 3, 30), zone), local_midnight(date(2025, 4, 1), zone))
    writers.write_readings_1m(ctx, days)
    writers.write_merged_level(ctx, writers.LEVEL_HOURLY, days)
    writers.write_daily(ctx, days)
    march = Window(local_midnight(date(2025, 3, 1), zone), local_midnight(date(2025, 4, 1), zone))
    writers.write_merged_level(ctx, writers.LEVEL_MONTHLY, march)
    origin = local_midnight(date(2025, 1, 1), zone)
    bounds = consistency.params(march.start, march.end, origin, zone, BERLIN, 10**8)
    raw = ("raw.readings", "time")

    def monthly(settings: Settings = ctx.settings) -> list[tuple[str, date, int]]:
        with engine.connect() as conn:
            found = consistency.find(conn, bounds, raw, settings, ("rollup_monthly",))
        return [(f.what, f.bucket, f.sensors) for f in found]

    assert monthly() == []
    with engine.begin() as conn:
        sensors = conn.execute(sa.text(f"SELECT count(*) FROM {MONTHLY}")).scalar_one()
        conn.execute(sa.text(f"UPDATE {MONTHLY} SET sample_count = sample_count + 1"))
    assert monthly() == [("rollup_monthly vs rollup_daily", date(2025, 3, 1), sensors)]
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {MONTHLY} SET sample_count = sample_count - 1, median_value = NULL")
        )
    what = f"{MONTHLY}: NULL medians that raw readings could fill"
    assert monthly() == [(what, date(2025, 3, 1), sensors)]
    # The median switched off: a NULL median is what the level holds, not a finding.
    assert monthly(Settings(timezone=BERLIN, monthly_median=False)) == []
    assert consistency.Finding("rollup_monthly", what, date(2025, 3, 1), 1).start(zone) == (
        march.start
    )
