"""Event metrics reads: a workspace's execution figures per hour, day, week or month.

Served from the ``analytics.execution_metrics_*`` rollup tables (issue 13's event
rollups), never from ``raw.executions``. Parameters are validated before anything reaches
the database; a bad one raises ``EventMetricsError`` (a ``ValueError``) naming it, an
unknown workspace ``UnknownWorkspace``.

    executions(engine, workspace_id, granularity="daily", periods=30)
"""

from __future__ import annotations

import sqlalchemy as sa

from agg_pipeline.serving import read_params

# granularity -> (table, its period column). Names are ours, never user input.
TABLES = {
    "hourly": ("analytics.execution_metrics_hourly", "hour_start"),
    "daily": ("analytics.execution_metrics_daily", "metric_date"),
    "weekly": ("analytics.execution_metrics_weekly", "week_start"),
    "monthly": ("analytics.execution_metrics_monthly", "month_start"),
}
MAX_PERIODS = 744
COLUMNS = (
    "execution_count, success_count, failed_count, cancelled_count, success_rate_pct, "
    "avg_duration_ms, min_duration_ms, max_duration_ms, p50_duration_ms, p95_duration_ms, "
    "credits_used, distinct_users"
)


class EventMetricsError(ValueError):
    """An event metrics parameter is invalid; the message names it."""


class UnknownWorkspace(EventMetricsError):
    """No execution metrics at all for this workspace at this granularity."""


def executions(
    engine: sa.Engine, workspace_id: str, granularity: str = "daily", periods: int = 30
) -> list[dict]:
    """The latest ``periods`` periods of ``workspace_id`` that have executions, oldest first.

    Each row: ``period_start`` (an instant for hourly, a local date otherwise) and the
    execution figures of that period.
    """
    read_params.text("workspace_id", workspace_id, EventMetricsError)
    if granularity not in TABLES:
        raise EventMetricsError(
            f"granularity must be one of {', '.join(TABLES)}, got {granularity!r}"
        )
    if isinstance(periods, bool) or not isinstance(periods, int):
        raise EventMetricsError(f"periods must be an integer, got {periods!r}")
    if not 1 <= periods <= MAX_PERIODS:
        raise EventMetricsError(f"periods must be from 1 to {MAX_PERIODS}, got {periods}")
    table, column = TABLES[granularity]
    with engine.connect() as conn:
        rows = [
            dict(r)
            for r in conn.execute(
                sa.text(
                    f"SELECT * FROM (SELECT {column} AS period_start, {COLUMNS} FROM {table} "
                    f"WHERE workspace_id = :w ORDER BY {column} DESC LIMIT :n) AS latest "
                    "ORDER BY period_start"
                ),
                {"w": workspace_id, "n": periods},
            ).mappings()
        ]
    if not rows:
        raise UnknownWorkspace(f"no {granularity} execution metrics for workspace {workspace_id!r}")
    return rows
