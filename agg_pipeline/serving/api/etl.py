"""``/api/etl/status`` and ``/api/etl/run``: seed 004's ETL endpoints.

Status is public and answers whatever is down: the warehouse part (connection, sensor
mappings, watermarks, row counts) is read on every request; the Dagster part (daemon
heartbeat, ``agg-pipeline status`` findings, InfluxDB) comes from an ``EtlBackend`` given
a few seconds, after which it is reported as not answering, and is reused for 10 s.

Run needs header ``X-API-Key`` equal to ``AGG_PIPELINE_API_KEY``, read from the
environment on every request (so a rotated key applies without a restart) and compared in
constant time; unset, the endpoint is disabled (503). The key is never logged or echoed.
The launch itself is the backend's (the Dagster instance: a backfill the daemon runs).
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import State

from agg_pipeline.config.settings import env_name
from agg_pipeline.core import hierarchy
from agg_pipeline.warehouse import figures

log = logging.getLogger("agg_pipeline.api")

router = APIRouter(prefix="/api/etl", tags=["etl"])

API_KEY_ENV = env_name("api_key")  # AGG_PIPELINE_API_KEY (config/settings.py documents it)
# How long status waits for the Dagster instance (a storage that is down can hang in
# connection retries far longer), and reuses its answer.
DAGSTER_TIMEOUT_SECONDS = 5.0
STATUS_TTL_SECONDS = 10.0
# Seed 004's watermark names -> the level whose ops.watermarks row they are.
WATERMARKS = {
    "etl_hourly_watermark": hierarchy.LEVEL_HOURLY.table,
    "etl_daily_watermark": hierarchy.LEVEL_DAILY.table,
}
ROW_COUNTS = {
    "hourly_rows": hierarchy.LEVEL_HOURLY.table,
    "daily_rows": hierarchy.LEVEL_DAILY.table,
}
Command = Literal["hourly", "daily", "full", "cleanup", "backfill"]


class Problem(BaseModel):
    detail: str


class RunRequest(BaseModel):
    """Seed 004's body. ``hours`` / ``days`` / ``retention_days`` unset: the command's
    defaults (hourly 3 h, daily 2 days, cleanup the retention settings)."""

    model_config = ConfigDict(extra="forbid")

    command: Command = "full"
    hours: int | None = Field(default=None, ge=1, le=744)
    days: int | None = Field(default=None, ge=1, le=366)
    retention_days: int | None = Field(default=None, ge=1, le=36_500)
    dry_run: bool = False


class PlannedStep(BaseModel):
    """One launch: a backfill of ``assets`` over ``partitions``, or a job's run."""

    kind: Literal["backfill", "run"]
    target: str  # the job or asset group
    assets: list[str]
    partitions: list[str]
    estimated_rows: int | None = None
    id: str | None = None  # the backfill / run id once launched


class RunAnswer(BaseModel):
    command: Command
    dry_run: bool
    backfill_ids: list[str]
    run_ids: list[str]
    steps: list[PlannedStep]


class DagsterSide(BaseModel):
    """What the backend knows beyond the warehouse."""

    dagster_reachable: bool
    scheduler_running: bool | None
    influx_connected: bool | None
    ok: bool | None = None
    problems: list[str] = []
    stale: list[str] = []
    missing: dict[str, list[str]] = {}
    failed: dict[str, list[str]] = {}


class EtlBackend(Protocol):
    """The Dagster side of the ETL endpoints (``agg_pipeline.launch`` implements it)."""

    def dagster_side(self) -> DagsterSide: ...

    def run(self, request: RunRequest) -> RunAnswer: ...


class Watermark(BaseModel):
    timestamp: datetime | None


class StatusAnswer(BaseModel):
    initialized: bool
    scheduler_running: bool | None
    pg_connected: bool
    influx_connected: bool | None
    dagster_reachable: bool
    sensor_mappings: int | None
    watermarks: dict[str, Watermark]
    row_counts: dict[str, int | None]
    ok: bool
    problems: list[str]
    stale: list[str]
    missing: dict[str, list[str]]
    failed: dict[str, list[str]]


def _warehouse(engine: sa.Engine) -> dict[str, Any]:
    out: dict[str, Any] = {
        "pg_connected": False,
        "initialized": False,
        "sensor_mappings": None,
        "watermarks": {name: {"timestamp": None} for name in WATERMARKS},
        "row_counts": dict.fromkeys(ROW_COUNTS),
        "problems": [],
    }
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            out["pg_connected"] = True
            migrated = conn.execute(sa.text("SELECT to_regclass('ops.watermarks')")).scalar()
            if migrated is None:
                out["problems"].append("warehouse not migrated (run `agg-pipeline migrate`)")
                return out
            out["initialized"] = True
            out["sensor_mappings"] = conn.execute(
                sa.text("SELECT count(*) FROM iot.sensors")
            ).scalar_one()
            marks = dict(
                conn.execute(
                    sa.text(
                        "SELECT table_name, complete_until FROM ops.watermarks "
                        "WHERE table_name = ANY(:t)"
                    ),
                    {"t": list(WATERMARKS.values())},
                ).all()
            )
            out["watermarks"] = {
                name: {"timestamp": marks.get(table)} for name, table in WATERMARKS.items()
            }
            out["row_counts"] = {
                name: figures.table_rows(conn, t, 2.0) for name, t in ROW_COUNTS.items()
            }
    except sa.exc.SQLAlchemyError as exc:
        log.warning("etl status: warehouse unreadable: %s", type(exc).__name__)
        out["problems"].append("warehouse unreachable")
    return out


_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="etl-status")
_cache_lock = threading.Lock()


def _dagster(backend: EtlBackend | None, timeout: float, state: State) -> DagsterSide:
    """The backend's answer, reused for ``state.status_ttl`` seconds: it reads every
    asset's partitions and checks (seconds on a busy instance), and monitors poll. One
    computation at a time: a request arriving meanwhile waits for the same one, and an
    answer that came too late for its request still serves the next ones."""
    if backend is None:
        return DagsterSide(dagster_reachable=False, scheduler_running=None, influx_connected=None)
    with _cache_lock:
        cached = getattr(state, "dagster_cached", None)
        if cached is not None and time.monotonic() - cached[0] < state.status_ttl:
            return cached[1]
        future = getattr(state, "dagster_pending", None)
        started = future is None
        if started:
            future = _executor.submit(backend.dagster_side)
            state.dagster_pending = future
    if started:
        # Outside the lock: a future already done runs its callback right here, and
        # _remember takes the lock (inside it, this thread would wait on itself forever).
        future.add_done_callback(lambda done: _remember(state, done))
    try:
        return future.result(timeout=timeout)
    except FutureTimeout:
        problem = f"Dagster instance not answering within {timeout:g} s"
    except Exception as exc:  # status answers whatever is down
        problem = f"Dagster instance unreadable: {type(exc).__name__}"
    return DagsterSide(
        dagster_reachable=False, scheduler_running=None, influx_connected=None, problems=[problem]
    )


def _remember(state: State, done: Future) -> None:
    with _cache_lock:
        state.dagster_pending = None
        if done.exception() is None and done.result().dagster_reachable:
            state.dagster_cached = (time.monotonic(), done.result())


@router.get("/status")
def etl_status(request: Request) -> StatusAnswer:
    """ETL status, watermarks, row counts, connection health; answers when things are down."""
    warehouse = _warehouse(request.app.state.engine)
    state = request.app.state
    dagster = _dagster(state.etl, state.dagster_timeout, state)
    problems = warehouse.pop("problems") + dagster.problems
    return StatusAnswer(
        **warehouse,
        scheduler_running=dagster.scheduler_running,
        influx_connected=dagster.influx_connected,
        dagster_reachable=dagster.dagster_reachable,
        ok=not problems and dagster.ok is not False,
        problems=problems,
        stale=dagster.stale,
        missing=dagster.missing,
        failed=dagster.failed,
    )


def _authorized(
    x_api_key: Annotated[str | None, Header(description=f"must equal {API_KEY_ENV}")] = None,
) -> None:
    # Read on every request: the key lives in the environment only (never in settings
    # dumps, metadata or logs), and a rotated key applies without a restart.
    expected = os.environ.get(API_KEY_ENV)
    if not expected:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"POST /api/etl/run is disabled: {API_KEY_ENV} is not set",
        )
    if x_api_key is None or not hmac.compare_digest(
        x_api_key.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    ):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong X-API-Key",
            headers={"WWW-Authenticate": "X-API-Key"},
        )


@router.post(
    "/run",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(_authorized)],
    responses={
        200: {"model": RunAnswer, "description": "dry run: the plan, nothing launched"},
        401: {"model": Problem, "description": "missing or wrong X-API-Key"},
        409: {"model": Problem, "description": "the command cannot be planned"},
        503: {"model": Problem, "description": "disabled (AGG_PIPELINE_API_KEY unset)"},
    },
)
def etl_run(request: Request, response: Response, body: RunRequest | None = None) -> RunAnswer:
    """Launch an ETL command through the Dagster instance (202 with backfill / run ids;
    a dry run answers 200 with the partitions and row estimates, launching nothing)."""
    body = body or RunRequest()  # no body: seed 004's default, the full cycle
    backend: EtlBackend | None = request.app.state.etl
    if backend is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no Dagster instance configured")
    try:
        answer = backend.run(body)
    except ValueError as exc:  # LaunchError: e.g. no complete partition in the window
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    if body.dry_run:
        response.status_code = status.HTTP_200_OK
    return answer
