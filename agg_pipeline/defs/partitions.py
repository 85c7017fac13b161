"""One partition definition per grain, all from settings (start date, time zone).

Hourly partitions include the hour in progress (``end_offset=1``): the 1m/5m downsamples
keep it current, and all hourly assets share one definition so a backfill runs 1m, 5m and
hourly rollups of the same hours in one run. Days and weeks are local days in the
configured zone, so a daily partition is 23 h or 25 h on DST days; weeks start on Monday;
months are local calendar months.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from agg_pipeline.defs.loaded import SETTINGS

_start = SETTINGS.start_date
_zone = SETTINGS.timezone

hourly = dg.HourlyPartitionsDefinition(
    start_date=f"{_start:%Y-%m-%d}-00:00", timezone=_zone, end_offset=1
)
daily = dg.DailyPartitionsDefinition(start_date=f"{_start:%Y-%m-%d}", timezone=_zone)
# The week containing the start date, from its Monday (day_offset=1: weeks start Monday).
weekly = dg.WeeklyPartitionsDefinition(
    start_date=f"{_start - timedelta(days=_start.weekday()):%Y-%m-%d}",
    timezone=_zone,
    day_offset=1,
)
# Local calendar months (event rollups), from the month containing the start date.
monthly = dg.MonthlyPartitionsDefinition(
    start_date=f"{_start.replace(day=1):%Y-%m-%d}", timezone=_zone
)

_GRAINS = {
    "0 * * * *": "hourly partitions start on the hour",
    "0 0 * * *": "daily partitions are local days",
    "0 0 * * 1": "weekly partitions start on Mondays",
    "0 0 1 * *": "monthly partitions are local months",
}


class PartitionKeyError(ValueError):
    """A partition key that is not one of the definition's keys; the message names it."""


def check_partition_key(pdef: dg.TimeWindowPartitionsDefinition, key: str, asset: str) -> None:
    """Refuse ``key`` unless it is exactly the key of a partition of ``pdef``.

    Dagster 1.13 checks a key against its format only: ``2026-11-01-10:30`` passes as an
    hourly key (``has_partition_key`` says True) and its window silently becomes
    11:00-12:00. A key is accepted when it is the key of its own window's start.
    """
    try:
        start = pdef.time_window_for_partition_key(key).start
        canonical = pdef.get_partition_key_for_timestamp(start.timestamp())
    except (ValueError, TypeError):
        canonical = None
    if canonical == key:
        return
    expected = pdef.fmt
    for code, shown in (("%Y", "YYYY"), ("%m", "MM"), ("%d", "DD"), ("%H", "HH"), ("%M", "00")):
        expected = expected.replace(code, shown)
    grain = _GRAINS.get(pdef.cron_schedule, pdef.cron_schedule)
    try:
        # The partition holding the instant the key names (10:30 -> the 10:00 hour).
        named = datetime.strptime(key, pdef.fmt).replace(tzinfo=ZoneInfo(pdef.timezone))
        hint = f"; did you mean {pdef.get_partition_key_for_timestamp(named.timestamp())!r}?"
    except (ValueError, TypeError):
        hint = ""
    raise PartitionKeyError(
        f"partition key {key!r} is not a partition of {asset}: expected {expected} "
        f"({grain}, in {pdef.timezone}){hint}"
    )
