"""The FastAPI app factory: routers, error answers, timing.

Every response carries ``Server-Timing: app;dur=<ms>`` and every request logs one line
(method, path, status, milliseconds) on the ``agg_pipeline.api`` logger; query strings
and headers are not logged (a header may carry the API key).

Error answers: a parameter out of range or of the wrong type is 422 naming it (FastAPI's
validation, then the read functions' own checks); an unknown device, metric or workspace
404; a warehouse that cannot be reached 503 with no internals (the log has the reason).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from agg_pipeline.serving import dashboard, event_metrics
from agg_pipeline.serving.api import analytics, etl

log = logging.getLogger("agg_pipeline.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TimingMiddleware:
    """Adds ``Server-Timing`` and logs each request's duration (a plain ASGI middleware:
    Starlette's BaseHTTPMiddleware would add a task per request on the hot path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                ms = (time.perf_counter() - start) * 1000
                headers = [
                    *message.get("headers", []),
                    (b"server-timing", f"app;dur={ms:.2f}".encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            log.info(
                "%s %s %s %.1f ms",
                scope.get("method"),
                scope.get("path"),
                status,
                (time.perf_counter() - start) * 1000,
            )


def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


def _invalid(request: Request, exc: Exception) -> JSONResponse:
    # The same shape as FastAPI's own 422 (the OpenAPI schema documents one shape); the
    # message starts with the parameter's name (read_params / dashboard).
    message = str(exc)
    name = message.split(" ", 1)[0]
    return JSONResponse(
        {"detail": [{"loc": ["query", name], "msg": message, "type": "value_error"}]},
        status_code=422,
    )


def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("warehouse unavailable on %s: %s", request.url.path, type(exc).__name__)
    return JSONResponse({"detail": "warehouse unavailable"}, status_code=503)


def create_app(
    engine: sa.Engine,
    etl_backend: etl.EtlBackend | None = None,
    dagster_timeout: float = etl.DAGSTER_TIMEOUT_SECONDS,
    status_ttl: float = etl.STATUS_TTL_SECONDS,
) -> FastAPI:
    """The app over ``engine`` (a pooled engine: ``warehouse.engine.engine_for``).

    ``etl_backend`` answers the Dagster side of ``/api/etl/*`` (the instance's daemon
    heartbeat, status findings, launching runs); without one, status reports the
    warehouse only and ``POST /api/etl/run`` answers 503.
    """
    app = FastAPI(
        title="agg_pipeline API",
        summary="The old analytics and ETL endpoints, served from the rollup tables.",
        version="1",
    )
    app.state.engine = engine
    app.state.etl = etl_backend
    app.state.dagster_timeout = dagster_timeout
    app.state.status_ttl = status_ttl
    app.include_router(analytics.router)
    app.include_router(etl.router)
    for unknown in (
        dashboard.UnknownDevice,
        dashboard.UnknownMetric,
        event_metrics.UnknownWorkspace,
    ):
        app.add_exception_handler(unknown, _not_found)
    for invalid in (dashboard.DashboardError, event_metrics.EventMetricsError):
        app.add_exception_handler(invalid, _invalid)
    # A refused / lost connection, a pool timeout: the warehouse is down, not the request.
    for down in (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError):
        app.add_exception_handler(down, _unavailable)
    app.add_middleware(TimingMiddleware)
    return app
