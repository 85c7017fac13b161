"""``agg-pipeline run`` (the old ``run_etl.py``) as cron calls it: a dry run writes nothing;
``run hourly --wait`` materializes the last complete hour in this process, records the run
in the Dagster instance, and the rollup equals pandas over the raw readings. And
``agg-pipeline serve`` answering over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import httpx
import pandas as pd
import pytest
import sqlalchemy as sa

from agg_pipeline.config.catalogue import load_catalogue
from agg_pipeline.demo import readings as simulator
from agg_pipeline_tests import reference

CLI = str(Path(sys.executable).parent / "agg-pipeline")
HYDRO = load_catalogue("hydroponics")


def test_run_hourly_dry_run_then_wait(warehouse_url, engine, tmp_path):
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    last = hour - timedelta(hours=1)  # the last complete hour
    spec = simulator.SimulationSpec(
        start=last - timedelta(hours=1), days=2 / 24, devices=2, hz=0.02
    )
    simulator.write(engine, HYDRO, spec)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DATABASE_URL": warehouse_url, "DAGSTER_HOME": str(home)}
    env.pop("AGG_PIPELINE_CATALOGUE", None)

    dry = subprocess.run(
        [CLI, "run", "hourly", "--hours", "1", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert f"1 partition(s) {last:%Y-%m-%d-%H:%M}" in dry.stdout and "nothing written" in dry.stdout
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM bi.hourly_sensor_agg")).scalar() == 0

    done = subprocess.run(
        [CLI, "run", "hourly", "--hours", "1", "--wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    run_id = done.stdout.split("hourly_rollup: run ", 1)[1].split()[0]
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.SUCCESS and run.job_name == "hourly_rollup"
        assert run.tags["agg_pipeline/command"] == "hourly"
    finally:
        instance.dispose()

    with engine.connect() as conn:
        got = pd.read_sql(
            sa.text(
                "SELECT dv.device_code AS device, s.field, h.hour_start, h.sample_count, "
                "h.avg_value FROM bi.hourly_sensor_agg h JOIN iot.sensors s ON s.id = h.sensor_id "
                "JOIN iot.devices dv ON dv.id = s.device_id ORDER BY 1, 2"
            ),
            conn,
        )
    raw = reference.load_raw(engine, last, hour)
    valid = reference.valid_readings(raw, HYDRO, datetime.now(UTC))
    want = valid.groupby(["device", "field"])["value"].agg(["count", "mean"]).reset_index()
    assert len(got) == len(want) > 0
    assert set(pd.to_datetime(got.hour_start, utc=True)) == {pd.Timestamp(last)}
    assert list(got.sample_count) == list(want["count"])
    assert got.avg_value.to_numpy() == pytest.approx(want["mean"].to_numpy(), rel=1e-9)


def test_serve_answers_over_http(warehouse_url, tmp_path):
    """The console script's `serve`, as `make dev` starts it: up on a free port, the
    analytics and status endpoints answering from the warehouse, stopped by its pid."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DATABASE_URL": warehouse_url, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [CLI, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                status = httpx.get(f"{base}/api/etl/status", timeout=30)
                break
            except httpx.TransportError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.3)
        assert status.status_code == 200 and status.json()["pg_connected"] is True
        unknown = httpx.get(f"{base}/api/v1/analytics/devices/none/hourly", timeout=30)
        assert unknown.status_code == 404 and "server-timing" in unknown.headers
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    logged = (tmp_path / "serve.log").read_text()
    assert "GET /api/v1/analytics/devices/none/hourly 404" in logged  # the duration log
