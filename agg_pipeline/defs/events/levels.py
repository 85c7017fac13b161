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
from agg_pipeline.warehouse import healing

PARTITIONS: dict[Grain, dg.TimeWindowPartitionsDefinition] = {
    Grain.HOURLY: partitions.hourly,
    Grain.DAILY: partitions.daily,
    Grain.WEEKLY: partitions.weekly,
    Grain.MONTHLY: partitions.monthly,
}
LEVELS: list[RollupLevel] = spec.levels(EVENTS_CATALOGUE)


def max_runtime(seconds: int) -> dict[str, str]:
    return {"dagster/max_runtime": str(seconds)}


# One job per grain (its schedule is in assets.py): name and timeout.
_JOBS = {
    Grain.HOURLY: ("events_hourly_rollup", 3600),
    Grain.DAILY: ("events_daily_rollup", 2 * 3600),
    Grain.WEEKLY: ("events_weekly_rollup", 4 * 3600),
    Grain.MONTHLY: ("events_monthly_rollup", 4 * 3600),
}
GRAIN_JOBS: dict[Grain, dg.UnresolvedAssetJobDefinition] = {}
for _grain, (_job, _limit) in _JOBS.items():
    _assets = [lv.asset for lv in LEVELS if lv.grain is _grain]
    if _assets:
        GRAIN_JOBS[_grain] = dg.define_asset_job(
            _job,
            selection=dg.AssetSelection.assets(*_assets),
            description=f"Event rollups, {_grain.value}: {', '.join(_assets)}.",
            tags=max_runtime(_limit),
        )

# Self-healing (warehouse/healing.py) heals every level declared, from its raw event
# table's hours (change log: sql/021 for the shipped tables, README for a catalogue's own).
SOURCE_TABLES: dict[str, tuple[str, str]] = {
    spec.source_asset(EVENTS_CATALOGUE, name): (src.table, src.time_column)
    for name, src in EVENTS_CATALOGUE.sources.items()
    if any(lv.spec.source == name for lv in LEVELS)
}
# What the healer heals: the fixed nodes and these levels over their raw event tables
# (passed to healing.assess / find_stale by the sensor and `status`).
HEALING_GRAPH: healing.Graph = healing.BASE.with_nodes(
    healing.event_nodes(LEVELS, EVENTS_CATALOGUE), SOURCE_TABLES
)
# The healer's run groups: the grain's job and the assets it selects.
HEALING_JOBS = {
    f"events_{g.value}": (job, [lv.asset for lv in LEVELS if lv.grain is g])
    for g, job in GRAIN_JOBS.items()
}


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


def id_columns() -> dict[str, str]:
    """The raw event tables with an id column, and that column (retention's ledger prune)."""
    return {s.table: s.id_column for s in EVENTS_CATALOGUE.sources.values() if s.id_column}


def hourly_tables() -> list[tuple[str, str]]:
    """Hourly event rollup tables and their key (aged by AGG_PIPELINE_RETENTION_ANALYTICS_
    HOURLY_DAYS; daily and coarser are kept forever)."""
    return [(lv.table, lv.bucket_column) for lv in LEVELS if lv.grain is Grain.HOURLY]
