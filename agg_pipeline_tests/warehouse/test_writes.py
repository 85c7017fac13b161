"""Partition writes: idempotent, atomic, safe under concurrency, careful with history."""

from __future__ import annotations

import threading
from datetime import timedelta

import pandas as pd
import sqlalchemy as sa

from agg_pipeline.defs.assets import readings_1m, readings_5m, rollup_hourly
from agg_pipeline_tests import data
from agg_pipeline_tests.warehouse.test_rollups import run_hours, run_partition

HOUR = "2026-11-02-05:00"


def snapshot(engine: sa.Engine, name: str) -> pd.DataFrame:
    with engine.connect() as conn:
        frame = pd.read_sql(sa.text(f"SELECT * FROM {name}"), conn)
    return (
        frame.drop(columns=[c for c in ("computed_at",) if c in frame])
        .sort_values(list(frame.columns[:2]))
        .reset_index(drop=True)
    )


def key_counts(engine: sa.Engine, name: str, key: str) -> tuple[int, int]:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(f"SELECT count(*), count(DISTINCT (sensor_id, {key})) FROM {name}")
        ).one()


def test_same_partition_twice_gives_the_same_rows(warehouse_url, engine):
    data.seed(engine, days=1)
    assets = [readings_1m, readings_5m, rollup_hourly]
    assert run_partition(warehouse_url, assets, HOUR).success
    first = {t: snapshot(engine, t) for t in ("bi.readings_1m", "bi.readings_5m")}
    hourly = snapshot(engine, "bi.hourly_sensor_agg")
    assert run_partition(warehouse_url, assets, HOUR).success
    for t, frame in first.items():
        pd.testing.assert_frame_equal(snapshot(engine, t), frame)
    pd.testing.assert_frame_equal(snapshot(engine, "bi.hourly_sensor_agg"), hourly)
    assert len(hourly) == 3 * 7


def test_two_concurrent_runs_leave_one_correct_row_per_key(warehouse_url, engine):
    data.seed(engine, days=1)
    results, errors = [], []

    def run():
        try:
            results.append(run_hours(warehouse_url, "2026-11-02-00:00", "2026-11-02-11:00"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(r.success for r in results)
    for name, key in (
        ("bi.readings_1m", "window_start"),
        ("bi.readings_5m", "window_start"),
        ("bi.hourly_sensor_agg", "hour_start"),
    ):
        total, distinct = key_counts(engine, name, key)
        assert total == distinct > 0, name
    concurrent = snapshot(engine, "bi.hourly_sensor_agg")
    # ... and the rows equal what a single, uncontended run writes
    assert run_hours(warehouse_url, "2026-11-02-00:00", "2026-11-02-11:00").success
    pd.testing.assert_frame_equal(snapshot(engine, "bi.hourly_sensor_agg"), concurrent)
    assert len(concurrent) == 3 * 7 * 12


def test_failed_write_leaves_the_old_partition_intact(warehouse_url, engine):
    data.seed(engine, days=1)
    assert run_partition(warehouse_url, [readings_1m, readings_5m], HOUR).success
    before = snapshot(engine, "bi.readings_5m")
    # New readings arrive, then the 5m write fails inside the database (a real error).
    data.insert(engine, [(data.DAY0 + timedelta(hours=5, minutes=1), "arduino_001", "ph", 6.1)])
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "ALTER TABLE bi.readings_5m ADD CONSTRAINT reject_all "
                "CHECK (sample_count < 0) NOT VALID"
            )
        )
    result = run_partition(warehouse_url, [readings_1m, readings_5m], HOUR, raise_on_error=False)
    assert not result.success
    pd.testing.assert_frame_equal(snapshot(engine, "bi.readings_5m"), before)


def test_history_survives_retention_of_the_levels_below(warehouse_url, engine):
    data.seed(engine, days=1)
    assets = [readings_1m, readings_5m, rollup_hourly]
    assert run_partition(warehouse_url, assets, HOUR).success
    hourly = snapshot(engine, "bi.hourly_sensor_agg")
    assert hourly["median_value"].notna().all()

    # Raw readings of the hour are gone (retention): nothing is wiped, medians are kept.
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM raw.readings"))
    result = run_partition(warehouse_url, assets, HOUR)
    assert result.success
    pd.testing.assert_frame_equal(snapshot(engine, "bi.hourly_sensor_agg"), hourly)
    md_1m = result.asset_materializations_for_node("readings_1m")[0].metadata
    assert "existing rows kept" in md_1m["notes"].value
    md_h = result.asset_materializations_for_node("rollup_hourly")[0].metadata
    # The hour's medians were computed with its 1m windows and kept with them.
    assert md_h["median_status"].value == {"exact": len(hourly)}

    # The 1-minute level is gone too: the hourly rows still stay.
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM bi.readings_1m"))
    assert run_partition(warehouse_url, [rollup_hourly], HOUR).success
    pd.testing.assert_frame_equal(snapshot(engine, "bi.hourly_sensor_agg"), hourly)


def test_hourly_rollup_stays_consistent_with_its_1m_level_under_late_data(warehouse_url, engine):
    data.seed(engine, days=1)
    assert run_partition(warehouse_url, [readings_1m, readings_5m, rollup_hourly], HOUR).success
    before = snapshot(engine, "bi.hourly_sensor_agg")
    data.insert(engine, [(data.DAY0 + timedelta(hours=5, minutes=30), "arduino_002", "ph", 6.4)])
    # Only the hourly rollup re-runs: the late reading is not in its 1m partials yet, and
    # the hour's median comes from the same 1m pass - count and median stay consistent.
    result = run_partition(warehouse_url, [rollup_hourly], HOUR)
    status = result.asset_materializations_for_node("rollup_hourly")[0].metadata
    assert status["median_status"].value == {"exact": 21}
    pd.testing.assert_frame_equal(snapshot(engine, "bi.hourly_sensor_agg"), before)
    # Once 1m re-runs (as automation does), the hour includes the late reading.
    assert run_partition(warehouse_url, [readings_1m, rollup_hourly], HOUR).success
    after = snapshot(engine, "bi.hourly_sensor_agg")
    assert after["sample_count"].sum() == before["sample_count"].sum() + 1
    assert after["median_value"].notna().all()
