"""What a raw-readings source is. Each answers the same questions, pushed down to where
the rows are, by filling temp tables in the warehouse transaction it is given:

- ``stage_1m``: 1-minute partials, hourly medians and rejection counts, per hour;
- ``stage_daily``: per (device, field, local day) the exact median and the condition
  counts and held durations - one pass for rollup_daily and conditions_daily;
- ``stage_medians``: exact medians per (device, field, week or month) for the weekly
  and monthly rollups.

The writers take it from there, whatever the source was. Implementations
(``sources.postgres``, ``sources.influx``) import this module, never each other;
``sources.readings_source`` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol

import sqlalchemy as sa

from agg_pipeline.core.conditions import ConditionBand
from agg_pipeline.core.windows import Window


@dataclass(frozen=True)
class StageContext:
    """What every staging query needs besides the window."""

    timezone: str
    latest_allowed: datetime  # readings stamped after this are `future`
    max_gap_seconds: float


class ReadingsSource(Protocol):
    # Returns the path taken, when the source has more than one (shown in run metadata).
    def stage_partials_1m(
        self, conn: sa.Connection, window: Window, ctx: StageContext
    ) -> str | None: ...

    # stage_medians and stage_daily return where they read ('hour_values', 'raw'), when
    # the source has more than one way (shown in run metadata).
    def stage_medians(
        self, conn: sa.Connection, window: Window, grain: str, ctx: StageContext
    ) -> str | None: ...

    def stage_daily(
        self,
        conn: sa.Connection,
        window: Window,
        bands: dict[tuple[date, str], ConditionBand],
        ctx: StageContext,
        with_medians: bool,
        with_conditions: bool,
    ) -> str | None: ...
