"""Every level against an independent pandas computation over the raw rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from agg_pipeline.config.catalogue import load_catalogue
from agg_pipeline.defs.assets import (
    daily_rollup_and_conditions,
    readings_1m,
    readings_5m,
    rollup_hourly,
    rollup_weekly,
)
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline_tests import data, reference

REL = 1e-9
HOURLY_ASSETS = [readings_1m, readings_5m, rollup_hourly]
CATALOGUE = load_catalogue("hydroponics")


def run_hours(url: str, first: str, last: str, assets=HOURLY_ASSETS) -> dg.ExecuteInProcessResult:
    """One run over a range of hourly partitions, as a single-run backfill executes it."""
    return dg.materialize(
        assets,
        resources={"warehouse": WarehouseResource(database_url=url), "influx": InfluxResource()},
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        },
    )


def run_partition(url: str, assets, key: str, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        assets,
        resources={"warehouse": WarehouseResource(database_url=url), "influx": InfluxResource()},
        partition_key=key,
        **kwargs,
    )


def table(engine: sa.Engine, name: str, key: str, mean: str = "avg_value") -> pd.DataFrame:
    with engine.connect() as conn:
        extra = ", t.stddev_value, t.median_value" if mean == "avg_value" else ", t.m2"
        return pd.read_sql(
            sa.text(
                f"SELECT dv.device_code AS device, s.field, t.{key} AS bucket, "
                f"t.sample_count, t.{mean} AS mean, t.min_value, t.max_value{extra} "
                f"FROM {name} AS t JOIN iot.sensors AS s ON s.id = t.sensor_id "
                "JOIN iot.devices AS dv ON dv.id = s.device_id"
            ),
            conn,
        )


def assert_matches(actual: pd.DataFrame, expected: pd.DataFrame, *, median: bool = True) -> None:
    merged = expected.merge(actual, on=["device", "field", "bucket"], how="outer", indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"].head()
    assert (merged["sample_count"] == merged["count"]).all()
    for ours, theirs in [("mean_y", "mean_x"), ("min_value", "min"), ("max_value", "max")]:
        assert merged[ours].to_numpy() == pytest.approx(merged[theirs].to_numpy(), rel=REL)
    if "stddev_value" in merged:
        single = merged["count"] == 1
        assert merged.loc[single, "stddev_value"].isna().all()
        assert merged.loc[~single, "stddev_value"].to_numpy() == pytest.approx(
            merged.loc[~single, "std"].to_numpy(), rel=REL
        )
    if median:
        assert merged["median_value"].to_numpy() == pytest.approx(
            merged["median"].to_numpy(), rel=REL
        )


@pytest.fixture
def seeded(engine):
    data.seed(engine)
    data.insert(engine, data.bad_rows(data.DAY0 + timedelta(hours=5)))
    return engine


def _expected(engine, start, end):
    raw = reference.load_raw(engine, start, end)
    return raw, reference.valid_readings(raw, CATALOGUE, datetime.now(UTC))


def test_hourly_levels_match_pandas(warehouse_url, seeded):
    result = run_hours(warehouse_url, "2026-11-02-00:00", "2026-11-02-23:00")
    assert result.success
    start, end = data.DAY0, data.DAY0 + timedelta(days=1)
    raw, valid = _expected(seeded, start, end)

    # 1-minute windows
    exp_1m = reference.grouped_stats(valid, valid["time"].dt.floor("1min"))
    got_1m = table(seeded, "bi.readings_1m", "window_start", mean="mean_value")
    assert_matches(got_1m, exp_1m, median=False)
    # M2 / (n - 1) is the sample variance
    merged = exp_1m.merge(got_1m, on=["device", "field", "bucket"])
    multi = merged["count"] > 1
    assert (merged.loc[multi, "m2"] / (merged.loc[multi, "count"] - 1)).to_numpy() == (
        pytest.approx((merged.loc[multi, "std"] ** 2).to_numpy(), rel=1e-8)
    )

    # 5-minute windows, merged from 1m
    exp_5m = reference.grouped_stats(valid, valid["time"].dt.floor("5min"))
    assert_matches(
        table(seeded, "bi.readings_5m", "window_start", mean="mean_value"), exp_5m, median=False
    )

    # hourly rollups, merged from 1m, exact median from raw
    exp_h = reference.grouped_stats(valid, valid["time"].dt.floor("1h"))
    assert_matches(table(seeded, "bi.hourly_sensor_agg", "hour_start"), exp_h)

    # metadata: rejected values by reason, counted as pandas counts them
    mats = result.asset_materializations_for_node("readings_1m")
    assert mats, "readings_1m reported no materialization"
    md = mats[0].metadata
    assert md["rejected_by_reason"].value == reference.rejected_by_reason(
        raw, CATALOGUE, datetime.now(UTC)
    )
    assert md["raw_rows_read"].value == len(raw)
    assert md["unknown_fields"].value == {"co2": 2}
    assert md["rows_written"].value == len(exp_1m)
    assert "| device |" in md["preview"].value


def test_daily_weekly_and_conditions_match_pandas(warehouse_url, seeded):
    assert run_hours(warehouse_url, "2026-11-02-00:00", "2026-11-03-23:00").success
    for day in ("2026-11-02", "2026-11-03"):
        assert run_partition(warehouse_url, [daily_rollup_and_conditions], day).success
    assert run_partition(warehouse_url, [rollup_weekly], "2026-11-02").success

    start, end = data.DAY0, data.DAY0 + timedelta(days=2)
    raw, valid = _expected(seeded, start, end)
    exp_d = reference.grouped_stats(valid, reference.local_day(valid["time"], "UTC"))
    got_d = table(seeded, "bi.daily_sensor_agg", "metric_date")
    assert_matches(got_d, exp_d)

    exp_w = reference.grouped_stats(
        valid, pd.Series([data.DAY0.date()] * len(valid), index=valid.index)
    )
    assert_matches(table(seeded, "bi.weekly_sensor_agg", "week_start"), exp_w)

    # conditions: ranges of the demo batch (lettuce, vegetative), critical margin 20 %
    bands = {
        "temperature": (17.0, 24.0, 17.0 * 0.8, 24.0 * 1.2),
        "humidity": (50.0, 70.0, 40.0, 84.0),
        "ph": (5.5, 6.5, 4.4, 7.8),
        "ec": (1.2, 2.0, 0.96, 2.4),
    }
    exp_c = reference.conditions(valid, bands, "UTC", max_gap_seconds=300.0)
    with seeded.connect() as conn:
        got_c = pd.read_sql(
            sa.text(
                "SELECT dv.device_code AS device, s.field, c.metric_date AS day, c.* "
                "FROM bi.daily_sensor_conditions c JOIN iot.sensors s ON s.id = c.sensor_id "
                "JOIN iot.devices dv ON dv.id = s.device_id"
            ),
            conn,
        )
        mirrored = pd.read_sql(
            sa.text(
                "SELECT a.time_in_optimal_pct AS a_opt, c.time_in_optimal_pct AS c_opt, "
                "a.time_in_critical_pct AS a_crit, c.time_in_critical_pct AS c_crit "
                "FROM bi.daily_sensor_agg a JOIN bi.daily_sensor_conditions c "
                "USING (sensor_id, metric_date)"
            ),
            conn,
        )
    merged = exp_c.merge(got_c, on=["device", "field", "day"], how="outer", indicator=True)
    assert (merged["_merge"] == "both").all()
    assert len(merged) == 3 * 4 * 2  # devices x condition fields x days
    assert (merged["reading_count_x"] == merged["reading_count_y"]).all()
    for col in (
        "optimal_pct_by_count",
        "critical_pct_by_count",
        "time_in_optimal_pct",
        "time_in_critical_pct",
        "covered_seconds",
    ):
        assert merged[f"{col}_y"].to_numpy() == pytest.approx(
            merged[f"{col}_x"].to_numpy(), rel=REL, abs=1e-9
        ), col
    # coverage: readings / expected readings (a 24 h day at the catalogue's 10 s interval)
    assert merged["coverage_pct"].to_numpy() == pytest.approx(
        (100.0 * merged["reading_count_x"] / 8640.0).to_numpy(), rel=REL
    )
    # the daily rollup carries the same time-weighted shares
    assert len(mirrored) == 24
    assert mirrored["a_opt"].to_numpy() == pytest.approx(mirrored["c_opt"].to_numpy(), rel=REL)
    assert mirrored["a_crit"].to_numpy() == pytest.approx(mirrored["c_crit"].to_numpy(), rel=REL)
