"""The merge of (count, mean, M2) partials into coarser buckets (merge_partials.sql, the
bi.merge_moments aggregate of migration 024), against numpy over the readings themselves.

Values sit on a large offset with a small spread: a naive sum of squares loses the spread
to cancellation there (the control below shows it would fail), Chan's pairwise merge
does not. Buckets of one part, of parts with equal means and of parts of one reading each
are the edge cases a merge gets wrong first.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from agg_pipeline.warehouse import statements

T0 = datetime(2026, 11, 2, tzinfo=UTC)


def _buckets() -> dict[str, list[list[float]]]:
    rng = np.random.default_rng(15)
    out = {
        "one part": [list(rng.normal(1e6, 3.0, 60))],
        "equal means": [[1e6 + 1.0, 1e6 - 1.0], [1e6 + 2.0, 1e6 - 2.0], [1e6]],
        "one reading per part": [[float(v)] for v in rng.normal(1e6, 0.5, 5)],
        "one reading": [[1e6 + 0.25]],
    }
    for k in range(20):  # many parts of uneven sizes, as minutes of a sparse series
        sizes = rng.integers(1, 61, size=int(rng.integers(2, 60)))
        out[f"mixed {k}"] = [list(rng.normal(1e6 + k, 2.0, int(n))) for n in sizes]
    return out


def _parts(buckets: dict[str, list[list[float]]]) -> list[dict]:
    rows = []
    for b, parts in enumerate(buckets.values()):
        for i, values in enumerate(parts):
            v = np.asarray(values)
            rows.append(
                {
                    "sensor_id": 1,
                    "bucket": T0 + timedelta(hours=b),
                    "n": len(v),
                    "mean": float(v.mean()),
                    "mn": float(v.min()),
                    "mx": float(v.max()),
                    "m2": float(((v - v.mean()) ** 2).sum()),
                    "first_at": T0 + timedelta(hours=b, minutes=i),
                    "last_at": T0 + timedelta(hours=b, minutes=i, seconds=30),
                }
            )
    return rows


@pytest.fixture
def merged(engine):
    buckets = _buckets()
    parts = _parts(buckets)
    sql = statements.render("merge_partials", parts="SELECT * FROM merge_parts")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TEMP TABLE merge_parts (sensor_id int, bucket timestamptz, n bigint, "
                "mean float8, mn float8, mx float8, m2 float8, first_at timestamptz, "
                "last_at timestamptz) ON COMMIT DROP"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO merge_parts VALUES (:sensor_id, :bucket, :n, :mean, :mn, :mx, :m2, "
                ":first_at, :last_at)"
            ),
            parts,
        )
        rows = conn.execute(sa.text(f"SELECT * FROM ({sql}) AS m ORDER BY bucket")).mappings()
        out = {r["bucket"]: dict(r) for r in rows}
    names = list(buckets)
    return {names[int((b - T0).total_seconds() // 3600)]: r for b, r in out.items()}, buckets


def test_every_bucket_once(merged):
    rows, buckets = merged
    assert set(rows) == set(buckets)


def test_merge_matches_the_readings(merged):
    rows, buckets = merged
    for name, parts in buckets.items():
        row, values = rows[name], np.concatenate([np.asarray(p) for p in parts])
        assert row["n"] == len(values), name
        assert isinstance(row["n"], int), name
        assert row["mean"] == pytest.approx(values.mean(), rel=1e-13), name
        assert (row["mn"], row["mx"]) == (values.min(), values.max()), name
        exact_m2 = float(((values - values.mean()) ** 2).sum())
        if exact_m2 == 0:
            assert row["m2"] == 0, name
        else:
            assert row["m2"] == pytest.approx(exact_m2, rel=1e-8), name
        assert row["first_at"] == T0 + timedelta(hours=list(buckets).index(name)), name
        assert row["last_at"] == row["first_at"] + timedelta(minutes=len(parts) - 1, seconds=30)


def test_a_naive_sum_of_squares_would_fail_here():
    """The control: the same buckets merged from sums of squares are far off, so the test
    above can tell a stable merge from a naive one."""
    worst = 0.0
    for parts in _buckets().values():
        values = np.concatenate([np.asarray(p) for p in parts])
        exact = float(((values - values.mean()) ** 2).sum())
        if exact == 0:
            continue
        sums = sum(float(np.sum(np.asarray(p) ** 2)) for p in parts)
        naive = sums - len(values) * float(values.mean()) ** 2
        worst = max(worst, abs(naive / exact - 1))
    assert worst > 1e-6
