"""HTTP API benchmark (issue 14): p50 / p99 latency and throughput of each endpoint under
32 concurrent clients, against `agg-pipeline serve` in its own process, and the same
question answered from raw rows (SQL, one client) for the speedup.

    python -m benchmarks.bench_api [--devices 20] [--hz 0.2] [--requests 640]

seeds a bench day, materializes it with the writers (1m, hourly, daily, device metrics,
diagnostics: no Dagster run needed for the read path), then measures. `make bench` calls
`measure_api` after the read path, on its own bench day.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa

from agg_pipeline.config.catalogue import load_catalogue
from agg_pipeline.config.settings import Settings
from agg_pipeline.core.windows import Window
from agg_pipeline.demo import readings as simulator
from agg_pipeline.sources import readings_source
from agg_pipeline.warehouse import migrate
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline.warehouse.writes import devices as writers_devices
from agg_pipeline.warehouse.writes import readings as writers

CLIENTS = 32


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def endpoints(device: str) -> dict[str, str]:
    """name -> path (hours 48 / days 30: the bench day lies within them)."""
    a = "/api/v1/analytics"
    return {
        "hourly": f"{a}/wells/{device}/hourly?hours=48",
        "daily": f"{a}/wells/{device}/daily?days=30",
        "performance": f"{a}/wells/{device}/performance?hours=48",
        "diagnostics_summary": f"{a}/diagnostics/summary?days=7",
        "performance_all": f"{a}/wells/performance/all?hours=48",
        "ranking_health": f"{a}/wells/ranking/health?hours=48&limit=10",
        "etl_status": "/api/etl/status",
    }


# The same questions from raw rows (what the rollups and views avoid): hydroponics bounds
# on the valid readings, like the writers.
_RAW_HOURS = (
    "SELECT {select} date_trunc('hour', time) AS h, field, count(*), avg(value), min(value), "
    "max(value), stddev_samp(value) FROM raw.readings WHERE time >= :s AND time < :e "
    "AND value BETWEEN 0 AND 100000 AND value <> 'NaN' {where} GROUP BY {group}"
)
RAW = {
    "hourly": _RAW_HOURS.format(select="", where="AND device = :device", group="1, 2"),
    "daily": (
        "SELECT (time AT TIME ZONE 'UTC')::date, field, count(*), avg(value), min(value), "
        "max(value), percentile_cont(0.5) WITHIN GROUP (ORDER BY value) FROM raw.readings "
        "WHERE time >= :s30 AND time < :e AND device = :device AND value <> 'NaN' "
        "GROUP BY 1, 2"
    ),
    "performance": _RAW_HOURS.format(select="", where="AND device = :device", group="1, 2"),
    "diagnostics_summary": (
        "SELECT device, (time AT TIME ZONE 'UTC')::date, severity, diagnosis_type, count(*), "
        "avg(confidence) FROM raw.diagnostics WHERE time >= :s7 AND time < :e "
        "AND confidence BETWEEN 0 AND 1 GROUP BY 1, 2, 3, 4"
    ),
    "performance_all": _RAW_HOURS.format(select="device,", where="", group="1, 2, 3"),
    "ranking_health": _RAW_HOURS.format(select="device,", where="", group="1, 2, 3"),
}


async def _load(base: str, path: str, requests: int) -> tuple[list[float], float, int]:
    """``requests`` GETs of ``path`` from CLIENTS concurrent clients: latencies (ms),
    wall seconds, and how many answers were not 200."""
    latencies: list[float] = []
    errors = 0
    queue = iter(range(requests))
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def worker() -> None:
            nonlocal errors
            for _ in queue:
                t = time.perf_counter()
                answer = await client.get(path)
                latencies.append((time.perf_counter() - t) * 1000)
                errors += answer.status_code != 200

        await client.get(path)  # warm: the first request opens the pool
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        wall = time.perf_counter() - started
    return latencies, wall, errors


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(
    warehouse_url: str, env: dict[str, str], log: Path, workers: int
) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cli = str(Path(sys.executable).parent / "agg-pipeline")
    proc = subprocess.Popen(
        [cli, "serve", "--port", str(port), "--workers", str(workers)],
        env={**env, "DATABASE_URL": warehouse_url},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/openapi.json", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"agg-pipeline serve did not start; see {log}")


def measure_api(
    engine: sa.Engine,
    warehouse_url: str,
    env: dict[str, str],
    end: datetime,
    requests: int,
    workers: int = 1,
) -> dict:
    with engine.connect() as conn:
        device = conn.execute(
            sa.text("SELECT device_code FROM iot.devices ORDER BY device_code LIMIT 1")
        ).scalar_one()
    params = {
        "device": device,
        "s": end - timedelta(days=1),
        "e": end,
        "s7": end - timedelta(days=7),
        "s30": end - timedelta(days=30),
    }
    log = Path(tempfile.mkdtemp(prefix="aggbench_api_")) / "serve.log"
    proc, base = _serve(warehouse_url, env, log, workers)
    out: dict = {}
    try:
        for name, path in endpoints(device).items():
            n = requests if name != "etl_status" else max(CLIENTS, requests // 10)
            latencies, wall, errors = asyncio.run(_load(base, path, n))
            # One client, one request at a time: the service time without queueing.
            serial = []
            with httpx.Client(base_url=base, timeout=60) as one:
                for _ in range(20):
                    t = time.perf_counter()
                    one.get(path)
                    serial.append((time.perf_counter() - t) * 1000)
            row = {
                "requests": n,
                "non_200": errors,
                "p50_ms": _percentile(latencies, 0.5),
                "p99_ms": _percentile(latencies, 0.99),
                "rps": n / wall,
                "one_client_p50_ms": _percentile(serial, 0.5),
            }
            if name in RAW:
                with engine.connect() as conn:
                    raw = []
                    for _ in range(5):
                        t = time.perf_counter()
                        conn.execute(sa.text(RAW[name]), params).all()
                        raw.append((time.perf_counter() - t) * 1000)
                row["raw_p50_ms"] = _percentile(raw, 0.5)
                # vs one client: the raw side is timed one query at a time too
                row["speedup"] = row["raw_p50_ms"] / row["one_client_p50_ms"]
            out[name] = row
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        "clients": CLIENTS,
        "workers": workers,
        "device": device,
        "endpoints": out,
        "server_log": str(log),
    }


def render(result: dict) -> str:
    lines = [
        f"HTTP API, {result['clients']} concurrent clients, {result['workers']} uvicorn "
        "worker(s) (p50 / p99 ms, requests/s; raw = "
        "the same question from raw rows, one client; speedup = raw / 1-client p50)",
        f"  {'endpoint':<20} {'p50':>7} {'p99':>7} {'req/s':>7} {'1-client':>8} {'raw p50':>8} "
        f"{'speedup':>8}",
    ]
    for name, r in result["endpoints"].items():
        raw = f"{r['raw_p50_ms']:8.1f} {r['speedup']:7.1f}x" if "raw_p50_ms" in r else ""
        bad = f"  ({r['non_200']} not 200)" if r["non_200"] else ""
        lines.append(
            f"  {name:<20} {r['p50_ms']:7.1f} {r['p99_ms']:7.1f} {r['rps']:7.0f} "
            f"{r['one_client_p50_ms']:8.1f} {raw}{bad}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.bench import BenchEnv, machine, progress

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_api")
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--hz", type=float, default=0.2)
    parser.add_argument("--requests", type=int, default=640, help="per endpoint")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of serve")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    catalogue = load_catalogue("hydroponics")
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(1)
    end = start + timedelta(days=1)
    env = BenchEnv(args.keep)
    try:
        migrate.migrate(env.engine)
        progress(f"seeding {args.devices} devices at {args.hz:g} Hz, {start:%Y-%m-%d}")
        spec = simulator.SimulationSpec(
            start=start, days=1, devices=args.devices, hz=args.hz, seed=42
        )
        readings = simulator.write(env.engine, catalogue, spec)
        simulator.write_diagnostics(env.engine, catalogue, start, 1, args.devices)
        progress("materializing the day (writers)")
        s = Settings()
        warehouse = WarehouseResource(database_url=env.warehouse_url)
        ctx = writers.WriteContext(
            warehouse, readings_source(catalogue, env.engine, s.parallelism), catalogue, s
        )
        day = Window(start, end)
        writers.write_readings_1m(ctx, day)
        writers.write_merged_level(ctx, writers.LEVEL_HOURLY, day)
        writers.write_daily(ctx, day)
        writers_devices.write_device_performance(ctx, day)
        writers_devices.write_diagnostic_summary(ctx, day)
        with env.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
        progress(f"measuring: {args.requests} requests per endpoint")
        result = measure_api(
            env.engine, env.warehouse_url, env.env(), end, args.requests, args.workers
        )
        result["dataset"] = {"readings": readings, "devices": args.devices, "hz": args.hz}
        result["machine"] = machine()
    finally:
        env.close()
    print(f"{result['dataset']}; {result['machine']}")
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
