"""``/api/v1/analytics/...``: seed 002's seven dashboard endpoints, plus event metrics.

The old API said ``wells``; agg_pipeline serves any catalogue's devices, so every
``/wells/...`` path is also served as ``/devices/...``. The answers come from
``serving/dashboard.py`` (rollup tables and the real-time hourly view) and
``serving/event_metrics.py``; the bounds here repeat theirs so the OpenAPI schema shows
them and a bad value is refused before a connection is taken.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Annotated, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel

from agg_pipeline.serving import dashboard, event_metrics


class Problem(BaseModel):
    detail: str


router = APIRouter(
    prefix="/api/v1/analytics",
    tags=["analytics"],
    responses={
        404: {"model": Problem, "description": "unknown device, metric or workspace"},
        503: {"model": Problem, "description": "the warehouse cannot be reached"},
    },
)

Hours = Annotated[int, Query(ge=1, le=dashboard.MAX_HOURS, description="look back, hours")]
Days = Annotated[int, Query(ge=1, le=dashboard.MAX_DAYS, description="look back, local days")]
Limit = Annotated[int, Query(ge=1, le=dashboard.MAX_LIMIT, description="devices at most")]
DeviceId = Annotated[str, Path(min_length=1, max_length=1000, description="device code")]


async def _engine(request: Request) -> sa.Engine:
    return request.app.state.engine


Engine = Annotated[sa.Engine, Depends(_engine)]


class HourlyItem(BaseModel):
    hour_start: datetime
    field: str
    unit: str | None
    avg_value: float | None
    min_value: float | None
    max_value: float | None
    sample_count: int
    stddev_value: float | None
    median_value: float | None
    live: bool  # computed from raw readings (the newest, not yet materialized hours)


class DailyItem(BaseModel):
    metric_date: date
    field: str
    unit: str | None
    avg_value: float | None
    min_value: float | None
    max_value: float | None
    sample_count: int
    stddev_value: float | None
    median_value: float | None
    time_in_optimal_pct: float | None
    time_in_critical_pct: float | None


class PerformanceItem(BaseModel):
    hour_start: datetime
    metric: str
    value: float | None
    unit: str | None


class DiagnosticsItem(BaseModel):
    device_code: str
    metric_date: date
    diagnostics_count: int
    by_severity: dict[str, int]
    by_type: dict[str, int]
    confidence_min: float | None
    confidence_avg: float | None
    confidence_max: float | None
    rejected_count: int


class DevicePerformanceItem(BaseModel):
    device_code: str
    metric: str
    value: float | None
    hours: int
    unit: str | None


class RankingItem(BaseModel):
    rank: int
    device_code: str
    value: float | None
    hours: int


class HourlyAnswer(BaseModel):
    device: str
    hours: int
    count: int
    data: list[HourlyItem]


class DailyAnswer(BaseModel):
    device: str
    days: int
    count: int
    data: list[DailyItem]


class PerformanceAnswer(BaseModel):
    device: str
    hours: int
    count: int
    data: list[PerformanceItem]


class DiagnosticsAnswer(BaseModel):
    device: str | None
    days: int
    count: int
    data: list[DiagnosticsItem]


class AllPerformanceAnswer(BaseModel):
    device: None = None
    hours: int
    count: int
    data: list[DevicePerformanceItem]


class RankingAnswer(BaseModel):
    device: None = None
    metric: str
    hours: int
    limit: int
    count: int
    data: list[RankingItem]


class ExecutionsItem(BaseModel):
    period_start: datetime | date
    execution_count: int
    success_count: int
    failed_count: int
    cancelled_count: int
    success_rate_pct: float | None
    avg_duration_ms: float | None
    min_duration_ms: float | None
    max_duration_ms: float | None
    p50_duration_ms: float | None
    p95_duration_ms: float | None
    credits_used: float
    distinct_users: int


class ExecutionsAnswer(BaseModel):
    workspace_id: str
    granularity: str
    periods: int
    count: int
    data: list[ExecutionsItem]


def _both(path: str) -> Callable[[Callable], Callable]:
    """Serve ``/wells{path}`` and its ``/devices{path}`` alias (only the first in the docs'
    operation ids, so the OpenAPI schema has no duplicate ids)."""

    def register(endpoint: Callable) -> Callable:
        router.add_api_route(f"/wells{path}", endpoint, methods=["GET"])
        router.add_api_route(
            f"/devices{path}",
            endpoint,
            methods=["GET"],
            operation_id=f"{endpoint.__name__}_devices",
        )
        return endpoint

    return register


@_both("/performance/all")
def all_performance(engine: Engine, hours: Hours = 24) -> AllPerformanceAnswer:
    """Every device's mean of each derived metric over the last ``hours`` hours."""
    rows = dashboard.all_devices_performance(engine, hours=hours)
    return AllPerformanceAnswer(hours=hours, count=len(rows), data=rows)


@_both("/ranking/efficiency")
def ranking_efficiency(engine: Engine, hours: Hours = 24, limit: Limit = 10) -> RankingAnswer:
    """Devices ranked by mean efficiency (1 = best)."""
    rows = dashboard.ranking_by_efficiency(engine, hours=hours, limit=limit)
    return RankingAnswer(metric="efficiency", hours=hours, limit=limit, count=len(rows), data=rows)


@_both("/ranking/health")
def ranking_health(engine: Engine, hours: Hours = 24, limit: Limit = 10) -> RankingAnswer:
    """Devices ranked by mean health score (1 = best)."""
    rows = dashboard.ranking_by_health(engine, hours=hours, limit=limit)
    return RankingAnswer(metric="health", hours=hours, limit=limit, count=len(rows), data=rows)


@_both("/{well_id}/hourly")
def hourly(engine: Engine, well_id: DeviceId, hours: Hours = 24) -> HourlyAnswer:
    """Hourly statistics of every sensor of the device; the newest hour included live."""
    rows = dashboard.hourly_for_device(engine, well_id, hours=hours)
    return HourlyAnswer(device=well_id, hours=hours, count=len(rows), data=rows)


@_both("/{well_id}/daily")
def daily(engine: Engine, well_id: DeviceId, days: Days = 30) -> DailyAnswer:
    """Daily statistics and time in optimal / critical ranges, local days."""
    rows = dashboard.daily_for_device(engine, well_id, days=days)
    return DailyAnswer(device=well_id, days=days, count=len(rows), data=rows)


@_both("/{well_id}/performance")
def performance(engine: Engine, well_id: DeviceId, hours: Hours = 24) -> PerformanceAnswer:
    """The catalogue's derived metrics (efficiency, health, ...) per hour."""
    rows = dashboard.performance_for_device(engine, well_id, hours=hours)
    return PerformanceAnswer(device=well_id, hours=hours, count=len(rows), data=rows)


@router.get("/diagnostics/summary")
def diagnostics_summary(
    engine: Engine,
    days: Days = 7,
    device: Annotated[str | None, Query(min_length=1, max_length=1000)] = None,
) -> DiagnosticsAnswer:
    """Diagnoses per device and local day: counts by severity and type, confidence."""
    rows = dashboard.diagnostics_summary(engine, days=days, device=device)
    return DiagnosticsAnswer(device=device, days=days, count=len(rows), data=rows)


@router.get("/workspaces/{workspace_id}/executions")
def executions(
    engine: Engine,
    workspace_id: Annotated[str, Path(min_length=1, max_length=1000)],
    granularity: Literal["hourly", "daily", "weekly", "monthly"] = "daily",
    periods: Annotated[int, Query(ge=1, le=event_metrics.MAX_PERIODS)] = 30,
) -> ExecutionsAnswer:
    """A workspace's latest ``periods`` periods with executions, oldest first."""
    rows = event_metrics.executions(engine, workspace_id, granularity, periods)
    return ExecutionsAnswer(
        workspace_id=workspace_id,
        granularity=granularity,
        periods=periods,
        count=len(rows),
        data=rows,
    )
