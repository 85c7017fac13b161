"""Window maths and mergeable partials, on hand-computed cases."""

from __future__ import annotations

import math
import random
import statistics
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from agg_pipeline.core.windows import (
    Partial,
    Window,
    day_window,
    m2_from_stddev,
    merge_all,
)

BERLIN = ZoneInfo("Europe/Berlin")


def test_empty_partial_and_merge_identity():
    empty = Partial.of([])
    assert empty.count == 0 and math.isnan(empty.mean)
    assert empty.variance is None and empty.stddev is None
    one = Partial.of([4.0])
    assert one.merge(empty) == one and empty.merge(one) == one


def test_one_point_has_no_sample_stddev():
    p = Partial.of([2.5])
    assert (p.count, p.mean, p.m2, p.min, p.max) == (1, 2.5, 0.0, 2.5, 2.5)
    assert p.stddev is None  # as PostgreSQL's stddev() of one row: NULL


def test_hand_computed_values():
    # 2, 4, 4, 4, 5, 5, 7, 9: mean 5, sum of squared deviations 32
    p = Partial.of([2, 4, 4, 4, 5, 5, 7, 9])
    assert p.mean == 5 and p.m2 == 32
    assert p.variance == pytest.approx(32 / 7)
    merged = Partial.of([2, 4, 4, 4]).merge(Partial.of([5, 5, 7, 9]))
    assert merged == Partial(8, 5.0, 32.0, 2, 9)


@pytest.mark.parametrize("seed", range(5))
def test_merge_equals_one_pass_for_any_split(seed):
    rng = random.Random(seed)
    values = [rng.gauss(1e6, 3.0) for _ in range(997)]  # large offset: cancellation bait
    pieces, start = [], 0
    while start < len(values):
        end = start + rng.randint(1, 60)
        pieces.append(Partial.of(values[start:end]))
        start = end
    merged = merge_all(pieces)
    assert merged.count == len(values)
    assert merged.mean == pytest.approx(statistics.fmean(values), rel=1e-12)
    assert merged.stddev == pytest.approx(statistics.stdev(values), rel=1e-9)
    assert (merged.min, merged.max) == (min(values), max(values))


def test_naive_sum_of_squares_would_fail_where_chan_does_not():
    # The reason M2 is merged with Chan's formula: sum(x^2) - n*mean^2 cancels.
    values = [1e9 + d for d in (0.1, 0.2, 0.3, 0.4)]
    naive = (sum(x * x for x in values) - len(values) * statistics.fmean(values) ** 2) / 3
    chan = merge_all(Partial.of([v]) for v in values).variance
    exact = statistics.variance(values)
    assert chan == pytest.approx(exact, rel=1e-6)
    assert abs(naive - exact) > 1e-3  # the naive formula is visibly off


def test_m2_from_stddev():
    assert m2_from_stddev(2.0, 5) == 16.0
    assert m2_from_stddev(None, 1) == 0.0
    assert m2_from_stddev(float("nan"), 3) == 0.0


def test_window_requires_aware_half_open_bounds():
    with pytest.raises(ValueError):
        Window(datetime(2026, 1, 1), datetime(2026, 1, 2))
    with pytest.raises(ValueError):
        Window(datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("day", "hours"),
    [(date(2025, 3, 30), 23), (date(2025, 10, 26), 25), (date(2025, 6, 1), 24)],
)
def test_local_days_are_23_24_25_hours_around_dst(day, hours):
    w = day_window(day, BERLIN)
    assert w.seconds == hours * 3600
    assert w.local_days(BERLIN) == [day]


def test_chunks_split_at_local_midnights():
    w = Window(datetime(2025, 10, 25, 12, tzinfo=BERLIN), datetime(2025, 10, 27, 6, tzinfo=BERLIN))
    chunks = list(w.chunks(BERLIN, days=1))
    assert [c.start for c in chunks] == [
        datetime(2025, 10, 25, 12, tzinfo=BERLIN),
        datetime(2025, 10, 26, 0, tzinfo=BERLIN),
        datetime(2025, 10, 27, 0, tzinfo=BERLIN),
    ]
    assert chunks[1].seconds == 25 * 3600  # the fall-back day, whole
    assert chunks[-1].end == w.end
    assert len(list(w.chunks(BERLIN, days=7))) == 1


def test_local_dates_are_half_open_local_days():
    # 2026-03-29 in Berlin is 23 hours long (DST starts): its window ends on 03-30 local.
    dst_day = day_window(date(2026, 3, 29), BERLIN)
    assert dst_day.local_dates(BERLIN) == (date(2026, 3, 29), date(2026, 3, 30))
    assert dst_day.local_days(BERLIN) == [date(2026, 3, 29)]
    # The same instants seen from UTC start the evening before.
    assert dst_day.local_dates(ZoneInfo("UTC")) == (date(2026, 3, 28), date(2026, 3, 29))
