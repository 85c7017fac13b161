"""Time windows and mergeable partial aggregates, as plain maths.

Windows are half-open ``[start, end)`` with timezone-aware bounds. Partials are
``(count, mean, M2)`` with M2 the sum of squared deviations from the mean; two partials
merge with Chan et al.'s parallel formula, so every level above the first is exact for
count, mean, min, max and variance. No Dagster, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class Window:
    """A half-open time window ``[start, end)``; both bounds timezone-aware, kept in UTC.

    Kept in UTC on purpose: Python compares and subtracts two datetimes that share a
    tzinfo by wall clock, so a 25-hour local day would measure 24 hours.
    """

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("window bounds must be timezone-aware")
        object.__setattr__(self, "start", self.start.astimezone(UTC))
        object.__setattr__(self, "end", self.end.astimezone(UTC))
        if self.end <= self.start:
            raise ValueError(f"empty window: end {self.end} <= start {self.start}")

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def local_dates(self, zone: ZoneInfo) -> tuple[date, date]:
        """The local date of the start and of the end (half-open: the end's date is the
        first day after a window that ends at a local midnight)."""
        return self.start.astimezone(zone).date(), self.end.astimezone(zone).date()

    def local_days(self, zone: ZoneInfo) -> list[date]:
        """Local calendar days the window touches (any instant of them)."""
        first = self.start.astimezone(zone).date()
        last = (self.end - timedelta(microseconds=1)).astimezone(zone).date()
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]

    def chunks(self, zone: ZoneInfo, days: int) -> Iterator[Window]:
        """Split at local midnights into pieces of at most ``days`` local days."""
        cursor = self.start
        while cursor < self.end:
            local_day = cursor.astimezone(zone).date()
            boundary = local_midnight(local_day + timedelta(days=days), zone).astimezone(UTC)
            nxt = min(boundary, self.end)
            yield Window(cursor, nxt)
            cursor = nxt

    def months(self, zone: ZoneInfo) -> Iterator[Window]:
        """Split at local month starts (a calendar month is never cut across chunks)."""
        cursor = self.start
        while cursor < self.end:
            first = cursor.astimezone(zone).date().replace(day=1)
            following = (first + timedelta(days=32)).replace(day=1)
            nxt = min(local_midnight(following, zone).astimezone(UTC), self.end)
            yield Window(cursor, nxt)
            cursor = nxt

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The instant a local day starts (00:00 local; 23 h / 25 h days around DST)."""
    return datetime.combine(day, time(0), tzinfo=zone)


def day_window(day: date, zone: ZoneInfo) -> Window:
    return Window(local_midnight(day, zone), local_midnight(day + timedelta(days=1), zone))


@dataclass(frozen=True)
class Partial:
    """Mergeable summary of a set of values: count, mean, M2, min, max.

    ``M2 = sum((x - mean)^2)``. The sample variance is ``M2 / (count - 1)``, undefined
    (None) for a single value; the empty partial has count 0 and NaN statistics.
    """

    count: int
    mean: float
    m2: float
    min: float
    max: float

    @classmethod
    def empty(cls) -> Partial:
        return cls(0, math.nan, 0.0, math.nan, math.nan)

    @classmethod
    def of(cls, values: Iterable[float]) -> Partial:
        """Welford's single pass over finite values (NaN and inf are the caller's to drop)."""
        count, mean, m2 = 0, 0.0, 0.0
        lo, hi = math.inf, -math.inf
        for x in values:
            count += 1
            delta = x - mean
            mean += delta / count
            m2 += delta * (x - mean)
            lo, hi = min(lo, x), max(hi, x)
        if count == 0:
            return cls.empty()
        return cls(count, mean, m2, lo, hi)

    def merge(self, other: Partial) -> Partial:
        """Chan et al.: combine two partials exactly (no sums of squares)."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / n
        m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / n
        return Partial(n, mean, m2, min(self.min, other.min), max(self.max, other.max))

    @property
    def variance(self) -> float | None:
        """Sample variance (as PostgreSQL's var_samp); None below two values."""
        return self.m2 / (self.count - 1) if self.count > 1 else None

    @property
    def stddev(self) -> float | None:
        """Sample standard deviation (as PostgreSQL's stddev); None below two values."""
        var = self.variance
        return math.sqrt(var) if var is not None else None


def merge_all(partials: Iterable[Partial]) -> Partial:
    result = Partial.empty()
    for p in partials:
        result = result.merge(p)
    return result


def m2_from_stddev(stddev: float | None, count: int) -> float:
    """M2 from a sample standard deviation (as InfluxDB's ``stddev()`` returns it)."""
    if count < 2 or stddev is None or math.isnan(stddev):
        return 0.0
    return stddev * stddev * (count - 1)
