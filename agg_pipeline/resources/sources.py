"""Raw-readings sources. Each answers the same questions, pushed down to where the rows are.

A source fills temp tables in the warehouse transaction it is given:

- ``stage_1m``: 1-minute partials with rejection counts (``stage_partials_1m.sql``),
- ``stage_medians``: exact medians per (device, field, hour | day | week),
- ``stage_conditions``: condition counts and held durations per (device, field, day).

The writers (``agg_pipeline.writers``) take it from there, whatever the source was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol

import sqlalchemy as sa

from agg_pipeline.catalogue import Catalogue
from agg_pipeline.compute import statements
from agg_pipeline.compute.conditions import ConditionBand
from agg_pipeline.compute.windows import Window


@dataclass(frozen=True)
class StageContext:
    """What every staging query needs besides the window."""

    timezone: str
    latest_allowed: datetime  # readings stamped after this are `future`
    max_gap_seconds: float


class ReadingsSource(Protocol):
    def stage_partials_1m(self, conn: sa.Connection, window: Window, ctx: StageContext) -> None: ...

    def stage_medians(
        self, conn: sa.Connection, window: Window, grain: str, ctx: StageContext
    ) -> None: ...

    def stage_conditions(
        self,
        conn: sa.Connection,
        window: Window,
        bands: dict[tuple[date, str], ConditionBand],
        ctx: StageContext,
    ) -> None: ...


def _run_hash_aggregated(conn: sa.Connection, sql: str, params: dict) -> None:
    """Run a staging statement with hash aggregation preferred over sorting.

    The planner cannot estimate how many (device, field, bucket) groups a window has, nor
    how large an array_agg state grows, and picks a sort-based plan: measured 15.0 s vs
    5.8 s for a day of 8.5M readings. Sorts the statement really needs (the time order for
    held durations) still happen; the setting is reset before anything else runs.
    """
    conn.execute(sa.text("SELECT set_config('enable_sort', 'off', true)"))
    try:
        conn.execute(sa.text(sql), params)
    finally:
        conn.execute(sa.text("SELECT set_config('enable_sort', 'on', true)"))


class PostgresReadingsSource:
    """Raw readings in a PostgreSQL table of the warehouse database (the catalogue's source)."""

    def __init__(self, catalogue: Catalogue) -> None:
        src = catalogue.source
        self.catalogue = catalogue
        self.columns = statements.RawColumns.of(
            src.table, src.time_column, src.device_column, src.field_column, src.value_column
        )

    def _common(self, window: Window, ctx: StageContext) -> dict:
        return {
            **self.catalogue.bounds_arrays(),
            "start": window.start,
            "end": window.end,
            "origin": window.start,
            "latest_allowed": ctx.latest_allowed,
            "tz": ctx.timezone,
        }

    def stage_partials_1m(self, conn: sa.Connection, window: Window, ctx: StageContext) -> None:
        sql = statements.render("stage_partials_1m", **self.columns.as_dict())
        _run_hash_aggregated(conn, sql, self._common(window, ctx))

    def stage_medians(
        self, conn: sa.Connection, window: Window, grain: str, ctx: StageContext
    ) -> None:
        bucket = statements.bucket_expression(grain, self.columns.time)
        sql = statements.render("stage_medians", bucket=bucket, **self.columns.as_dict())
        _run_hash_aggregated(conn, sql, self._common(window, ctx))

    def stage_conditions(
        self,
        conn: sa.Connection,
        window: Window,
        bands: dict[tuple[date, str], ConditionBand],
        ctx: StageContext,
    ) -> None:
        keys = sorted(bands)
        params = {
            **self._common(window, ctx),
            "max_gap_seconds": ctx.max_gap_seconds,
            "cond_day": [k[0] for k in keys],
            "cond_field": [k[1] for k in keys],
            "cond_opt_min": [bands[k].optimal_min for k in keys],
            "cond_opt_max": [bands[k].optimal_max for k in keys],
            "cond_crit_below": [bands[k].critical_below for k in keys],
            "cond_crit_above": [bands[k].critical_above for k in keys],
        }
        sql = statements.render("stage_conditions", **self.columns.as_dict())
        _run_hash_aggregated(conn, sql, params)


def readings_source(catalogue: Catalogue) -> ReadingsSource:
    """The source the catalogue describes."""
    if catalogue.source.kind == "postgres":
        return PostgresReadingsSource(catalogue)
    raise ValueError(f"unsupported source kind {catalogue.source.kind!r}")
