"""Condition bands, by hand."""

import pytest

from agg_pipeline.core.conditions import band, share_pct, widest


def test_critical_is_twenty_percent_beyond_each_bound():
    b = band(5.5, 6.5, 20)
    assert b.critical_below == pytest.approx(4.4)
    assert b.critical_above == pytest.approx(7.8)
    assert [b.classify(v) for v in (6.0, 5.0, 4.39, 7.81, 7.8)] == [
        "optimal",
        "acceptable",
        "critical",
        "critical",
        "acceptable",
    ]


def test_margin_uses_magnitude_for_negative_bounds():
    b = band(-10.0, 10.0, 50)
    assert (b.critical_below, b.critical_above) == (-15.0, 15.0)


def test_band_rejects_empty_range():
    with pytest.raises(ValueError):
        band(6.5, 5.5, 20)


def test_widest_range_is_most_permissive():
    assert widest([(5.8, 6.3), (5.5, 6.5), (5.6, 6.8)]) == (5.5, 6.8)
    assert widest([]) is None


def test_share_of_nothing_is_none():
    assert share_pct(1, 0) is None
    assert share_pct(1, 4) == 25.0
