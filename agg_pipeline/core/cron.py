"""The previous tick of a cron expression, for freshness deadlines (no dependency needed).

Supports the five standard fields with ``*``, numbers, ``a-b`` ranges, ``a,b`` lists and
``*/n`` steps - what our schedules and freshness policies use. Day-of-week 0 and 7 are
Sunday. Walks back minute by minute (at most ~8 days: milliseconds).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def _field(spec: str, lo: int, hi: int) -> set[int]:
    values: set[int] = set()
    for part in spec.split(","):
        step = 1
        if "/" in part:
            part, step_s = part.split("/")
            step = int(step_s)
        if part == "*":
            start, end = lo, hi
        elif "-" in part:
            a, b = part.split("-")
            start, end = int(a), int(b)
        else:
            start = end = int(part)
        if not (lo <= start <= hi and lo <= end <= hi):
            raise ValueError(f"cron field {spec!r} outside {lo}-{hi}")
        values.update(range(start, end + 1, step))
    return values


def previous_tick(cron: str, before: datetime, zone: str = "UTC") -> datetime:
    """The latest time <= ``before`` matching ``cron`` in ``zone`` (aware result)."""
    parts = cron.split()
    if len(parts) != 5:
        raise ValueError(f"expected 5 cron fields, got {cron!r}")
    minutes, hours, days, months, weekdays = (
        _field(p, lo, hi) for p, (lo, hi) in zip(parts, _RANGES, strict=True)
    )
    if 7 in weekdays:
        weekdays.add(0)
    tz = ZoneInfo(zone)
    t = before.astimezone(tz).replace(second=0, microsecond=0)
    for _ in range(60 * 24 * 370):
        if (
            t.minute in minutes
            and t.hour in hours
            and t.day in days
            and t.month in months
            and (t.isoweekday() % 7) in weekdays
        ):
            return t
        t = (t.astimezone(ZoneInfo("UTC")) - timedelta(minutes=1)).astimezone(tz)
    raise ValueError(f"no tick of {cron!r} in the year before {before}")
