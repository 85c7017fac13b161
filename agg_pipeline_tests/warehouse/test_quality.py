"""The blocking stats_valid check's query (quality.invalid_buckets) on rows written by hand:
it names the buckets holding a row that breaks an invariant, counts every row of the
window once, and leaves rows outside the window alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from agg_pipeline.core import hierarchy
from agg_pipeline.warehouse import quality

T0 = datetime(2026, 11, 2, tzinfo=UTC)
INSERT = (
    "INSERT INTO bi.readings_5m (sensor_id, window_start, sample_count, mean_value, min_value, "
    "max_value, m2, first_reading_at, last_reading_at) "
    "VALUES (:sensor, :w, :n, :mean, :mn, :mx, :m2, :w, :w)"
)


def _row(sensor: int, minutes: int, mean: float = 5.0, mn: float = 4.0, m2: float = 1.0) -> dict:
    return {
        "sensor": sensor,
        "w": T0 + timedelta(minutes=minutes),
        "n": 3,
        "mean": mean,
        "mn": mn,
        "mx": 6.0,
        "m2": m2,
    }


def test_invalid_buckets_names_the_bad_ones_and_counts_every_row(engine):
    rows = [_row(s, m) for s in (1, 2, 3) for m in (0, 5, 10, 15)]
    rows[5] = _row(2, 5, mn=5.5)  # min above the mean
    rows[10] = _row(3, 10, m2=-1.0)  # negative spread
    rows.append(_row(1, 20, mean=100.0))  # outside the window checked: not counted
    with engine.begin() as conn:
        conn.execute(sa.text(INSERT), rows)
        bad, total = quality.invalid_buckets(
            conn, hierarchy.LEVEL_5M, {"lo": T0, "hi": T0 + timedelta(minutes=20)}
        )
        (shown_5,) = conn.execute(sa.text("SELECT CAST(:w AS timestamptz)::text"), rows[5]).one()
        (shown_10,) = conn.execute(sa.text("SELECT CAST(:w AS timestamptz)::text"), rows[10]).one()
    assert total == 12
    assert bad == [(shown_5, 1), (shown_10, 1)]


def test_invalid_buckets_of_a_clean_window(engine):
    with engine.begin() as conn:
        conn.execute(sa.text(INSERT), [_row(s, m) for s in (1, 2) for m in (0, 5)])
        bad, total = quality.invalid_buckets(
            conn, hierarchy.LEVEL_5M, {"lo": T0, "hi": T0 + timedelta(hours=1)}
        )
    assert (bad, total) == ([], 4)
