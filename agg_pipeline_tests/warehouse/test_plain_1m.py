"""The 1-minute pass's plain GROUP BY path (AGG_PIPELINE_PLAIN_1M) against pandas, and
against the exact path: the same rows, whichever path a window takes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from agg_pipeline.config.settings import get_settings
from agg_pipeline.demo import readings as simulator
from agg_pipeline_tests import data, reference
from agg_pipeline_tests.warehouse.test_rollups import (
    CATALOGUE,
    assert_matches,
    run_hours,
    table,
)

DAY0, DAY1 = data.DAY0, data.DAY0 + timedelta(days=1)


@pytest.fixture
def seeded(engine):
    # No duplicates from the simulator (its bad values stay): the only duplicates are the
    # two pairs bad_rows puts into 05:07 of DAY0; 07:07 gets the same bad values without
    # them; DAY1 has bad values but no duplicate at all.
    spec = simulator.SimulationSpec(
        start=DAY0, days=2, devices=3, hz=0.02, seed=7, duplicate_rate=0.0
    )
    simulator.write(engine, CATALOGUE, spec)
    data.insert(engine, data.bad_rows(DAY0 + timedelta(hours=5)))
    data.insert(engine, data.bad_rows(DAY0 + timedelta(hours=7))[:8])
    return engine


def _paths(result) -> dict:
    return result.asset_materializations_for_node("readings_1m")[0].metadata["stage_1m_paths"].value


def _rows(engine: sa.Engine) -> tuple[pd.DataFrame, pd.DataFrame]:
    with engine.connect() as conn:
        minutes = pd.read_sql(
            sa.text(
                "SELECT sensor_id, window_start, sample_count, mean_value, min_value, "
                "max_value, m2, first_reading_at, last_reading_at FROM bi.readings_1m "
                "ORDER BY 1, 2"
            ),
            conn,
        )
        medians = pd.read_sql(
            sa.text("SELECT * FROM bi.hourly_medians ORDER BY sensor_id, hour_start"), conn
        )
    return minutes, medians


def _assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    for column in a.columns:
        if pd.api.types.is_float_dtype(a[column]):
            assert a[column].to_numpy() == pytest.approx(b[column].to_numpy(), rel=1e-9)
        else:
            assert (a[column] == b[column]).all(), column


def test_plain_path_matches_pandas_and_the_exact_path(warehouse_url, seeded, monkeypatch):
    monkeypatch.setenv("AGG_PIPELINE_PLAIN_1M", "true")
    get_settings.cache_clear()
    now = datetime.now(UTC)
    # DAY0 holds duplicates in one hour: plain, then those (device, field, hour) groups
    # (water_temp and light of arduino_001 at 05:00) re-read exactly.
    day0 = run_hours(warehouse_url, "2026-11-02-00:00", "2026-11-02-23:00")
    assert day0.success
    assert _paths(day0) == {"plain+exact": 1, "exact_hours": 2}
    # DAY1: bad values, no duplicate: the plain path alone.
    day1 = run_hours(warehouse_url, "2026-11-03-00:00", "2026-11-03-23:00")
    assert day1.success
    assert _paths(day1) == {"plain": 1}

    raw = reference.load_raw(seeded, DAY0, DAY1 + timedelta(days=1))
    valid = reference.valid_readings(raw, CATALOGUE, now)
    exp_1m = reference.grouped_stats(valid, valid["time"].dt.floor("1min"))
    assert_matches(
        table(seeded, "bi.readings_1m", "window_start", mean="mean_value"), exp_1m, median=False
    )
    exp_h = reference.grouped_stats(valid, valid["time"].dt.floor("1h"))
    assert_matches(table(seeded, "bi.hourly_sensor_agg", "hour_start"), exp_h)
    for result, (lo, hi) in ((day0, (DAY0, DAY1)), (day1, (DAY1, DAY1 + timedelta(days=1)))):
        md = result.asset_materializations_for_node("readings_1m")[0].metadata
        part = raw[(raw["time"] >= lo) & (raw["time"] < hi)]
        assert md["rejected_by_reason"].value == reference.rejected_by_reason(part, CATALOGUE, now)
        assert md["raw_rows_read"].value == len(part)

    plain = _rows(seeded)
    # The same two days through the exact path only: identical rows.
    monkeypatch.setenv("AGG_PIPELINE_PLAIN_1M", "false")
    get_settings.cache_clear()
    both = run_hours(warehouse_url, "2026-11-02-00:00", "2026-11-03-23:00")
    assert both.success
    assert _paths(both) == {"exact": 2}
    exact = _rows(seeded)
    _assert_same(plain[0], exact[0])
    _assert_same(plain[1], exact[1])
