"""End to end through the real daemon: `dagster dev` started here, a partition backfill
launched through GraphQL (what the UI's "Materialize > backfill" does), tables checked.

dagster dev runs the webserver, the daemon (backfills, run queue, sensors) and a code
server, with dagster.yaml's PostgreSQL storage on a test database. Its processes are
stopped at the end by the process-group id this test started them under.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import sqlalchemy as sa

from agg_pipeline.catalogue import load_catalogue
from agg_pipeline_tests import data, reference
from agg_pipeline_tests.conftest import create_database, drop_database
from agg_pipeline_tests.test_rollups import assert_matches, table

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""
POLL = """
query Poll($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numPartitions }
    ... on PythonError { message }
  }
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body
    return body["data"]


def start_dagster_dev(
    project_root: Path, env: dict[str, str], port: int, log_path: Path
) -> tuple[subprocess.Popen, IO[str]]:
    """`dagster dev` in its own process group (webserver, daemon, code server)."""
    log = open(log_path, "w")  # noqa: SIM115 - closed by stop_dagster_dev
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster"),
            "dev",
            "-w",
            str(project_root / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=project_root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, log


def stop_dagster_dev(proc: subprocess.Popen, log: IO[str]) -> None:
    """Stop every process of the group, forcibly if it does not stop within a minute."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    log.close()


def wait_for(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # not up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error})")


def test_backfill_through_the_daemon(pg_server_url, project_root, tmp_path):
    tag = uuid.uuid4().hex[:8]
    warehouse = create_database(pg_server_url, f"agge2e_wh_{tag}")
    storage = create_database(pg_server_url, f"agge2e_dg_{tag}")
    engine = sa.create_engine(warehouse)
    from agg_pipeline import migrate

    migrate.migrate(engine)
    data.seed(engine, start=data.DAY0, days=1, devices=2, hz=0.01)

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(project_root / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": warehouse,
        "DAGSTER_PG_URL": storage,
        "DAGSTER_HOME": str(home),
        # Only the backfill under test: the cadence schedules stay off here.
        **{
            f"AGG_PIPELINE_SCHEDULE_{name}": "false"
            for name in (
                "READINGS_1M",
                "READINGS_5M",
                "ROLLUP_HOURLY",
                "ROLLUP_DAILY",
                "CONDITIONS_DAILY",
                "ROLLUP_WEEKLY",
                "RETENTION",
                "DASHBOARD_REFRESH",
                "EVENTS_HOURLY",
                "EVENTS_DAILY",
                "EVENTS_WEEKLY",
                "EVENTS_MONTHLY",
                "ANALYTICS_VIEWS",
            )
        },
        "AGG_PIPELINE_LATE_DATA_SENSOR": "false",
    }
    proc, log = start_dagster_dev(project_root, env, port, tmp_path / "dagster-dev.log")
    try:
        wait_for(
            lambda: graphql(port, "{ assetNodes { assetKey { path } } }")["assetNodes"],
            timeout=180,
            what="dagster dev to serve the asset graph",
        )
        hours = [f"2026-11-02-{h:02d}:00" for h in range(24)]
        launched = graphql(
            port,
            LAUNCH,
            {
                "params": {
                    "assetSelection": [
                        {"path": ["readings_1m"]},
                        {"path": ["readings_5m"]},
                        {"path": ["rollup_hourly"]},
                    ],
                    "partitionNames": hours,
                    "title": "e2e test backfill",
                }
            },
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]

        def finished():
            result = graphql(port, POLL, {"id": backfill_id})["partitionBackfillOrError"]
            assert result["__typename"] == "PartitionBackfill", result
            if result["status"] in ("FAILED", "COMPLETED_FAILED", "CANCELED"):
                raise AssertionError(f"backfill ended {result['status']}")
            return result if result["status"] in ("COMPLETED_SUCCESS", "COMPLETED") else None

        done = wait_for(finished, timeout=300, what="the backfill to complete", interval=2)
        assert done["numPartitions"] == 24

        # One run did it (single-run backfill policy), and the numbers are right.
        runs = graphql(
            port, "{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }"
        )["runsOrError"]["results"]
        backfill_runs = [
            r
            for r in runs
            if any(t["key"] == "dagster/backfill" and t["value"] == backfill_id for t in r["tags"])
        ]
        assert len(backfill_runs) == 1 and backfill_runs[0]["status"] == "SUCCESS"
        raw = reference.load_raw(engine, data.DAY0, data.DAY0 + timedelta(days=1))
        valid = reference.valid_readings(raw, load_catalogue("hydroponics"), datetime.now(UTC))
        assert_matches(
            table(engine, "bi.hourly_sensor_agg", "hour_start"),
            reference.grouped_stats(valid, valid["time"].dt.floor("1h")),
        )
    finally:
        stop_dagster_dev(proc, log)
        engine.dispose()
        drop_database(pg_server_url, f"agge2e_wh_{tag}")
        drop_database(pg_server_url, f"agge2e_dg_{tag}")


def test_self_healing_through_the_daemon(pg_server_url, project_root, tmp_path):
    """First fill, then late readings into two hours of two days, healed by the running
    daemon alone (no click, schedules off): hour, day and week end equal to pandas."""
    import pytest

    from agg_pipeline_tests.test_self_healing import assert_equals_raw, late_rows

    now = datetime.now(UTC)
    # The healing window starts on the Monday of the week of (now - 7 days): that week is
    # complete, and its Saturday / Sunday are history already in the warehouse.
    week = datetime.combine((now - timedelta(days=7)).date(), datetime.min.time(), UTC)
    week -= timedelta(days=week.weekday())
    if now < week + timedelta(days=7, hours=2, minutes=30):
        pytest.skip("the week is not due for its weekly rollup yet (Monday before 02:30)")
    weekend = week + timedelta(days=5)

    tag = uuid.uuid4().hex[:8]
    warehouse = create_database(pg_server_url, f"agge2e_wh_{tag}")
    storage = create_database(pg_server_url, f"agge2e_dg_{tag}")
    engine = sa.create_engine(warehouse)
    from agg_pipeline import migrate
    from agg_pipeline.demo import readings as simulator

    migrate.migrate(engine)
    simulator.write_demo_crops(engine)  # the bands the pandas reference expects (BANDS)
    data.seed(engine, start=weekend, days=2, devices=2, hz=0.005)

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(project_root / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": warehouse,
        "DAGSTER_PG_URL": storage,
        "DAGSTER_HOME": str(home),
        # Switches on (a switch off also stops its level's first fill). The schedules
        # only touch the open hour / yesterday; the weekend is the healer's alone.
        "AGG_PIPELINE_LATE_DATA_SENSOR": "true",
        # The event metrics (no events here) stay out of the daemon's run queue.
        **{
            f"AGG_PIPELINE_SCHEDULE_{name}": "false"
            for name in (
                "EVENTS_HOURLY",
                "EVENTS_DAILY",
                "EVENTS_WEEKLY",
                "EVENTS_MONTHLY",
                "ANALYTICS_VIEWS",
            )
        },  # fmt: skip
    }
    proc, log = start_dagster_dev(project_root, env, port, tmp_path / "dagster-dev.log")

    def equal_to_raw() -> bool:
        try:
            assert_equals_raw(engine, week, week + timedelta(days=7))
        except AssertionError:
            return False
        return True

    try:
        started = time.monotonic()
        wait_for(equal_to_raw, timeout=300, what="the first fill", interval=5)
        first_fill = time.monotonic() - started
        data.insert(engine, late_rows(weekend + timedelta(hours=10)))
        data.insert(engine, late_rows(weekend + timedelta(days=1, hours=3), device="arduino_002"))
        inserted = time.monotonic()
        assert not equal_to_raw()
        wait_for(equal_to_raw, timeout=300, what="hour, day and week to heal", interval=5)
        healed = time.monotonic() - inserted
        runs = graphql(
            port, "{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }"
        )["runsOrError"]["results"]
        by_healer = [
            r
            for r in runs
            if {"key": "dagster/sensor_name", "value": "self_healing_sensor"} in r["tags"]
        ]
        # First fill: hours, days, week; then 2 hour runs, 1 day run, 1 week run.
        assert len(by_healer) >= 6, by_healer
        # (the last may still be finishing: the data was already right)
        assert not [r for r in by_healer if r["status"] in ("FAILURE", "CANCELED")], by_healer
        print(
            f"first fill {first_fill:.0f} s; late readings healed at every level in "
            f"{healed:.0f} s; {len(by_healer)} healing runs"
        )
    finally:
        stop_dagster_dev(proc, log)
        engine.dispose()
        drop_database(pg_server_url, f"agge2e_wh_{tag}")
        drop_database(pg_server_url, f"agge2e_dg_{tag}")
