"""Dashboard queries: the seven questions the old continuous aggregates answered.

Each is served from the rollup tables only (through the ``bi.v_*`` views and the
``bi.device_ranking`` function in ``warehouse/migrations/012_dashboards.sql``, which
Grafana or any BI tool can also query directly). Parameters are validated before anything
reaches the database, and a bad one raises ``DashboardError`` (a ``ValueError``) with a
message that names it:

- ``hours`` an int from 1 to 744 (31 days), ``days`` an int from 1 to 366, ``limit`` an
  int from 1 to 100 (a bool is not an int here);
- ``now`` a timezone-aware ``datetime`` (naive ones are refused), ``today`` a
  ``datetime.date`` (not a datetime, not a string), both 1970-01-01 or later;
- ``device`` / ``metric`` non-empty strings without NUL characters (at most 1000), for a
  device / derived metric that exists; ``descending`` a real bool (``"false"`` is refused).

    hourly_for_device(engine, device, hours=24)       hourly stats of a device's sensors
    daily_for_device(engine, device, days=30)         daily stats (+ conditions)
    performance_for_device(engine, device, hours=24)  derived metrics (scores) per hour
    diagnostics_summary(engine, days=7, device=None)  diagnoses by severity / type
    all_devices_performance(engine, hours=24)         every device's mean scores
    ranking(engine, metric, hours=24, limit=10)       devices ranked by a metric
    ranking_by_efficiency / ranking_by_health         the two the old API had
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import TypedDict, Unpack

import sqlalchemy as sa

from agg_pipeline.config.settings import get_settings
from agg_pipeline.serving import read_params

MAX_HOURS = 24 * 31
MAX_DAYS = 366
MAX_LIMIT = 100


class DashboardError(ValueError):
    """A dashboard query parameter is invalid; the message names it."""


class UnknownDevice(DashboardError):
    """The device named is not registered (the HTTP API answers 404, not 422)."""


class UnknownMetric(DashboardError):
    """The derived metric named is not in ``bi.derived_metrics`` (404 over HTTP)."""


def _bounded(name: str, value: int, upper: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
        raise DashboardError(f"{name} must be an integer from 1 to {upper}, got {value!r}")
    return value


def _device_id(conn: sa.Connection, device: str) -> int:
    read_params.text("device", device, DashboardError)
    found = conn.execute(
        sa.text("SELECT id FROM iot.devices WHERE device_code = :d"), {"d": device}
    ).scalar()
    if found is None:
        raise UnknownDevice(f"unknown device {device!r}")
    return found


def _known_metric(conn: sa.Connection, metric: str) -> str:
    read_params.text("metric", metric, DashboardError)
    known = conn.execute(sa.text("SELECT metric FROM bi.derived_metrics ORDER BY 1")).scalars()
    known = list(known)
    if metric not in known:
        raise UnknownMetric(
            f"unknown metric {metric!r}; known: {', '.join(known) or 'none materialized yet'}"
        )
    return metric


def _rows(conn: sa.Connection, sql: str, params: dict) -> list[dict]:
    return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return read_params.instant("now", now, DashboardError)


def _today(today: date | None) -> date:
    if today is None:
        # Daily rows are local days of AGG_PIPELINE_TIMEZONE (metric_date is the local
        # date), so "the last N days" counts back from today there, not in UTC.
        return datetime.now(get_settings().zone).date()
    return read_params.day("today", today, DashboardError)


def hourly_for_device(
    engine: sa.Engine, device: str, hours: int = 24, now: datetime | None = None
) -> list[dict]:
    """Hourly stats of every sensor of ``device`` over the last ``hours`` hours.

    Read through ``bi.hourly_sensor_agg_realtime`` (warehouse/realtime.py): hours before
    the hourly watermark from the rollup, the newest (still open or not yet materialized)
    hours computed from raw readings after it, so the hour in progress is included and
    nothing older is read from raw. ``live`` says which part a row came from.
    """
    _bounded("hours", hours, MAX_HOURS)
    since = _now(now) - timedelta(hours=hours)
    with engine.connect() as conn:
        device_id = _device_id(conn, device)
        # The view's live half reads raw from a watermark the planner cannot see (a
        # subquery), so it guesses a third of raw and plans a parallel scan; starting the
        # workers cost ~8 ms of a ~1 ms read (bench: 8.5 M readings, p50 16 ms -> see README).
        # This transaction only: a read of a few rows never gains from workers.
        conn.execute(sa.text("SELECT set_config('max_parallel_workers_per_gather', '0', true)"))
        return _rows(
            conn,
            "SELECT s.field, st.unit, h.hour_start, h.avg_value, h.min_value, h.max_value, "
            "h.sample_count, h.stddev_value, h.median_value, h.live "
            "FROM bi.hourly_sensor_agg_realtime AS h "
            "JOIN iot.sensors AS s ON s.id = h.sensor_id "
            "JOIN iot.sensor_types AS st ON st.id = s.sensor_type_id "
            # sensor_id = ANY(...), not s.device_id = :dev: a restriction on the view's
            # own column reaches both halves of its UNION ALL (the rollup's primary key,
            # and the live part's readings), where a join condition is applied after.
            "WHERE h.sensor_id = ANY(ARRAY(SELECT id FROM iot.sensors WHERE device_id = :dev)) "
            "AND h.hour_start >= :since "
            "ORDER BY h.hour_start, s.field",
            {"dev": device_id, "since": since},
        )


def daily_for_device(
    engine: sa.Engine, device: str, days: int = 30, today: date | None = None
) -> list[dict]:
    """Daily stats (and time in optimal / critical) of ``device`` over the last ``days``."""
    _bounded("days", days, MAX_DAYS)
    today = _today(today)
    with engine.connect() as conn:
        _device_id(conn, device)
        return _rows(
            conn,
            "SELECT field, unit, metric_date, avg_value, min_value, max_value, sample_count, "
            "stddev_value, median_value, time_in_optimal_pct, time_in_critical_pct "
            "FROM bi.v_daily_readings WHERE device_code = :d AND metric_date >= :since "
            "ORDER BY metric_date, field",
            {"d": device, "since": today - timedelta(days=days)},
        )


def performance_for_device(
    engine: sa.Engine, device: str, hours: int = 24, now: datetime | None = None
) -> list[dict]:
    """Derived metrics (efficiency, health, anomalies...) of ``device`` per hour."""
    _bounded("hours", hours, MAX_HOURS)
    since = _now(now) - timedelta(hours=hours)
    with engine.connect() as conn:
        _device_id(conn, device)
        return _rows(
            conn,
            "SELECT hour_start, metric, value, unit FROM bi.v_device_performance_hourly "
            "WHERE device_code = :d AND hour_start >= :since ORDER BY hour_start, metric",
            {"d": device, "since": since},
        )


def diagnostics_summary(
    engine: sa.Engine, days: int = 7, device: str | None = None, today: date | None = None
) -> list[dict]:
    """Diagnoses per device and day: counts by severity and type, confidence stats."""
    _bounded("days", days, MAX_DAYS)
    today = _today(today)
    with engine.connect() as conn:
        if device is not None:
            _device_id(conn, device)
        return _rows(
            conn,
            "SELECT device_code, metric_date, diagnostics_count, by_severity, by_type, "
            "confidence_min, confidence_avg, confidence_max, rejected_count "
            "FROM bi.v_diagnostic_summary_daily WHERE metric_date >= :since "
            "AND (CAST(:d AS text) IS NULL OR device_code = :d) "
            "ORDER BY metric_date, device_code",
            {"since": today - timedelta(days=days), "d": device},
        )


def all_devices_performance(
    engine: sa.Engine, hours: int = 24, now: datetime | None = None
) -> list[dict]:
    """Every device's mean of each derived metric over the last ``hours`` hours."""
    _bounded("hours", hours, MAX_HOURS)
    since = _now(now) - timedelta(hours=hours)
    with engine.connect() as conn:
        return _rows(
            conn,
            "SELECT device_code, metric, avg(value) AS value, count(value) AS hours, "
            "min(unit) AS unit FROM bi.v_device_performance_hourly "
            "WHERE hour_start >= :since GROUP BY 1, 2 ORDER BY 1, 2",
            {"since": since},
        )


def ranking(
    engine: sa.Engine,
    metric: str,
    hours: int = 24,
    limit: int = 10,
    descending: bool = True,
    now: datetime | None = None,
) -> list[dict]:
    """Devices ranked by their mean ``metric`` over the last ``hours`` (1 = best)."""
    _bounded("hours", hours, MAX_HOURS)
    _bounded("limit", limit, MAX_LIMIT)
    read_params.flag("descending", descending, DashboardError)
    since = _now(now) - timedelta(hours=hours)
    with engine.connect() as conn:
        _known_metric(conn, metric)
        return _rows(
            conn,
            "SELECT rank, device_code, value, hours "
            "FROM bi.device_ranking(:m, :since, :limit, :desc)",
            {
                "m": metric,
                "since": since,
                "limit": limit,
                "desc": descending,
            },
        )


class _RankingOptions(TypedDict, total=False):
    """The keyword arguments the ranking shortcuts pass on to ``ranking``."""

    descending: bool
    now: datetime | None


def ranking_by_efficiency(
    engine: sa.Engine, hours: int = 24, limit: int = 10, **kw: Unpack[_RankingOptions]
) -> list[dict]:
    return ranking(engine, "efficiency", hours, limit, **kw)


def ranking_by_health(
    engine: sa.Engine, hours: int = 24, limit: int = 10, **kw: Unpack[_RankingOptions]
) -> list[dict]:
    return ranking(engine, "health", hours, limit, **kw)
