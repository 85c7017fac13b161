"""The console script and the Dagster CLI, headless, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from agg_pipeline import migrate
from agg_pipeline.catalogue import load_catalogue
from agg_pipeline_tests import reference
from agg_pipeline_tests.conftest import create_database, drop_database
from agg_pipeline_tests.test_rollups import assert_matches, table

BIN = Path(sys.executable).parent


def run(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc


def test_migrate_seed_and_dagster_cli_on_an_empty_database(pg_server_url, tmp_path):
    name = f"aggcli_{uuid.uuid4().hex[:8]}"
    url = create_database(pg_server_url, name)  # empty: no schema yet
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("")  # a bare instance
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DAGSTER_HOME": str(dagster_home),
        "AGG_PIPELINE_HOME": str(tmp_path / "home"),
    }
    try:
        out = run([str(BIN / "agg-pipeline"), "migrate"], env).stdout
        assert f"{len(migrate.discover())} migration(s) applied" in out and "password" not in out
        assert "0 migration(s) applied" in run([str(BIN / "agg-pipeline"), "migrate"], env).stdout
        out = run(
            [
                str(BIN / "agg-pipeline"),
                "seed",
                "--days",
                "1",
                "--start",
                "2026-11-01",
                "--devices",
                "2",
                "--hz",
                "0.01",
            ],
            env,
        ).stdout
        assert "wrote" in out
        dagster = str(BIN / "dagster")
        run(
            [
                dagster,
                "asset",
                "materialize",
                "-m",
                "agg_pipeline.definitions",
                "--select",
                "readings_1m,readings_5m,rollup_hourly",
                "--partition-range",
                "2026-11-01-00:00...2026-11-01-23:00",
            ],
            env,
        )
        run(
            [
                dagster,
                "asset",
                "materialize",
                "-m",
                "agg_pipeline.definitions",
                "--select",
                "rollup_daily,conditions_daily",
                "--partition",
                "2026-11-01",
            ],
            env,
        )

        engine = sa.create_engine(url)
        start = datetime(2026, 11, 1, tzinfo=UTC)
        raw = reference.load_raw(engine, start, start + timedelta(days=1))
        valid = reference.valid_readings(raw, load_catalogue("hydroponics"), datetime.now(UTC))
        assert_matches(
            table(engine, "bi.hourly_sensor_agg", "hour_start"),
            reference.grouped_stats(valid, valid["time"].dt.floor("1h")),
        )
        assert_matches(
            table(engine, "bi.daily_sensor_agg", "metric_date"),
            reference.grouped_stats(valid, reference.local_day(valid["time"], "UTC")),
        )
        with engine.connect() as conn:
            conditions = pd.read_sql(sa.text("SELECT * FROM bi.daily_sensor_conditions"), conn)
            sensors = conn.execute(sa.text("SELECT count(*) FROM iot.sensors")).scalar_one()
        engine.dispose()
        assert len(conditions) == 2 * 4 and sensors == 2 * 7
    finally:
        drop_database(pg_server_url, name)


def test_local_embedded_server_lifecycle(tmp_path):
    env = {**os.environ, "AGG_PIPELINE_HOME": str(tmp_path / "home")}
    env.pop("DATABASE_URL", None)
    cli = str(BIN / "agg-pipeline")
    try:
        out = run([cli, "db", "start"], env).stdout
        assert "local PostgreSQL running" in out
        url = run([cli, "db", "url"], env).stdout.strip()
        assert url.startswith("postgresql+psycopg2://postgres@/agg_pipeline?host=")
        dagster_url = run([cli, "db", "url", "--dagster"], env).stdout.strip()
        assert "/dagster?host=" in dagster_url
        out = run([cli, "migrate"], env).stdout  # no DATABASE_URL: the local server
        assert f"{len(migrate.discover())} migration(s) applied" in out
        out = run([cli, "seed", "--days", "0.1", "--devices", "1", "--if-empty"], env).stdout
        assert "wrote" in out
        out = run([cli, "seed", "--days", "0.1", "--if-empty"], env).stdout
        assert "already has readings" in out  # make dev does not seed twice
    finally:
        out = run([cli, "db", "stop"], env).stdout
    assert "stopped" in out
    assert "not running" in run([cli, "db", "stop"], env).stdout
