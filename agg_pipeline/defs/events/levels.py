"""The event rollup levels the catalogue declares (defs/loaded.py), their partitions, and
what the retention job needs to know of them: which raw event days every level over
them has materialized, and which tables are aged by the hour.

Apart from the assets (assets.py imports the schedules, and the retention op imports
this): no import cycle through defs/automation.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import date

import dagster as dg

from agg_pipeline.config import events as spec
from agg_pipeline.config.events import Grain, RollupLevel
from agg_pipeline.core.windows import Window, day_window
from agg_pipeline.defs import partitions
from agg_pipeline.defs.loaded import EVENTS_CATALOGUE, SETTINGS

PARTITIONS: dict[Grain, dg.TimeWindowPartitionsDefinition] = {
    Grain.HOURLY: partitions.hourly,
    Grain.DAILY: partitions.daily,
    Grain.WEEKLY: partitions.weekly,
    Grain.MONTHLY: partitions.monthly,
}
LEVELS: list[RollupLevel] = spec.levels(EVENTS_CATALOGUE)


def _days_covered(level: RollupLevel, keys: set[str]) -> set[date]:
    """Local days wholly covered by materialized partitions ``keys`` of ``level``."""
    zone, pdef = SETTINGS.zone, PARTITIONS[level.grain]
    if level.grain is Grain.HOURLY:
        hours: Counter = Counter()
        for key in keys:
            hours[pdef.time_window_for_partition_key(key).start.astimezone(zone).date()] += 1
        return {d for d, n in hours.items() if n * 3600 == day_window(d, zone).seconds}
    days: set[date] = set()
    for key in keys:
        tw = pdef.time_window_for_partition_key(key)
        days.update(Window(tw.start, tw.end).local_days(zone))
    return days


def raw_tables_and_their_days(
    instance: dg.DagsterInstance,
) -> dict[str, Callable[[], set[date]]]:
    """Per raw event table: the local days every rollup level over it has materialized
    (a day may go only then: no level could be computed again without it)."""

    def rolled_up(table: str) -> set[date]:
        days: set[date] | None = None
        for level in LEVELS:
            if level.source.table != table:
                continue
            keys = instance.get_materialized_partitions(dg.AssetKey(level.asset))
            mine = _days_covered(level, set(keys))
            days = mine if days is None else days & mine
        return days or set()

    tables = sorted({lv.source.table for lv in LEVELS})
    return {t: (lambda t=t: rolled_up(t)) for t in tables}


def time_column_of(table: str) -> str:
    return next(s.time_column for s in EVENTS_CATALOGUE.sources.values() if s.table == table)


def hourly_tables() -> list[tuple[str, str]]:
    """Hourly event rollup tables and their key (aged by AGG_PIPELINE_RETENTION_ANALYTICS_
    HOURLY_DAYS; daily and coarser are kept forever)."""
    return [(lv.table, lv.bucket_column) for lv in LEVELS if lv.grain is Grain.HOURLY]
