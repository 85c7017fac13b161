"""Optimal / critical bands for condition percentages.

Definitions (kept from the old ETL, written down here):

- The optimal range of a field on a day is the *widest* across the crop batches active
  that day: the lowest ``optimal_min`` and the highest ``optimal_max`` (most permissive).
  Without any batch range, the catalogue's default ``optimal`` range applies; without
  either, the field has no conditions.
- A value is *optimal* when ``optimal_min <= v <= optimal_max``.
- A value is *critical* when it lies more than ``margin_pct`` percent beyond a bound:
  ``v < optimal_min - |optimal_min| * margin`` or ``v > optimal_max + |optimal_max| * margin``
  (20 % by default: pH 5.5-6.5 is critical below 4.4 and above 7.8). Values between the
  optimal and critical bounds are neither.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ConditionBand:
    optimal_min: float
    optimal_max: float
    critical_below: float
    critical_above: float

    def classify(self, value: float) -> str:
        """'optimal', 'critical' or 'acceptable' (in between)."""
        if self.optimal_min <= value <= self.optimal_max:
            return "optimal"
        if value < self.critical_below or value > self.critical_above:
            return "critical"
        return "acceptable"


def band(optimal_min: float, optimal_max: float, margin_pct: float) -> ConditionBand:
    """The band for an optimal range and a critical margin in percent."""
    if optimal_max <= optimal_min:
        raise ValueError(f"optimal_max {optimal_max} must exceed optimal_min {optimal_min}")
    margin = margin_pct / 100.0
    return ConditionBand(
        optimal_min=optimal_min,
        optimal_max=optimal_max,
        critical_below=optimal_min - abs(optimal_min) * margin,
        critical_above=optimal_max + abs(optimal_max) * margin,
    )


def widest(ranges: Iterable[tuple[float, float]]) -> tuple[float, float] | None:
    """The widest (most permissive) of several (min, max) ranges; None for none."""
    ranges = list(ranges)
    if not ranges:
        return None
    return (min(r[0] for r in ranges), max(r[1] for r in ranges))


def share_pct(part: float, whole: float) -> float | None:
    """``100 * part / whole``; None when there is nothing to take a share of."""
    return 100.0 * part / whole if whole > 0 else None
