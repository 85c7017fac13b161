"""One partition definition per grain, all from settings (start date, time zone).

Hourly partitions include the hour in progress (``end_offset=1``): the 1m/5m downsamples
keep it current, and all hourly assets share one definition so a backfill runs 1m, 5m and
hourly rollups of the same hours in one run. Days and weeks are local days in the
configured zone, so a daily partition is 23 h or 25 h on DST days; weeks start on Monday.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from agg_pipeline.settings import get_settings

_settings = get_settings()
_start = _settings.start_date
_zone = _settings.timezone

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
