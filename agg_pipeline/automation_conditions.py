"""Declarative automation: how late data heals itself, named once.

Division of labour (and why):

- **Schedules** own the regular cadence, exactly like the crons they replace: the open
  hour every minute / 5 minutes, the previous hour at :05, the previous day at 01:30, the
  previous week Monday 02:00. Time-driven work is most predictable as a schedule.
- **Automation conditions** own corrections: a partition that was already materialized
  and whose upstream changed afterwards (late readings observed by the late-data sensor,
  then each level above in turn) is re-materialized - that partition only.

``AutomationCondition.eager()`` only looks at the latest time window (measured: late data
in an older partition is ignored), so the condition here carries an explicit lookback.
It never fills *missing* partitions (first materialization is the schedules' or a
backfill's job) and, for hourly assets, leaves alone the two newest hours, which the
schedules are still working on; corrections for those wait until they age out of that
window (at most an hour).
"""

from datetime import timedelta

import dagster as dg

from agg_pipeline.settings import get_settings

AC = dg.AutomationCondition

# Upstream changed since this partition was last materialized (or requested).
upstream_changed = AC.any_deps_updated().since_last_handled().with_label("upstream changed")

# Nothing upstream or here is running, and no blocking check upstream failed.
quiet = (
    ~AC.in_progress() & ~AC.any_deps_in_progress() & AC.all_deps_blocking_checks_passed()
).with_label("nothing in flight, upstream checks passed")


def late_data_correction(scheduled_hours: int = 0) -> dg.AutomationCondition:
    """Re-materialize already-materialized partitions within the lookback after late data.

    ``scheduled_hours``: the newest hourly partitions left to the schedules.
    """
    lookback = timedelta(days=get_settings().late_data_lookback_days)
    condition = AC.in_latest_time_window(lookback) & ~AC.missing() & upstream_changed & quiet
    if scheduled_hours:
        condition = condition & ~AC.in_latest_time_window(timedelta(hours=scheduled_hours))
    return condition.with_label("late data correction")


hourly_correction = late_data_correction(scheduled_hours=2)
daily_correction = late_data_correction()
