"""End to end through the real daemon, against real PostgreSQL: a partition backfill
launched through GraphQL (what the UI's "Materialize > backfill" does), self-healing of
late readings repeated three times, and catch-up after the daemon was down.

One deployment serves the whole module, started the way ``dagster dev`` starts it: a
code server, ``dagster-webserver`` and ``dagster-daemon run`` reading a workspace that
points both at that code server, with dagster.yaml's PostgreSQL storage on a test
database. They run as three process groups so the downtime test can stop and start the
daemon alone (schedules, sensors, run queue) while the webserver and the code server
stay up, as in a deployment whose daemon crashed. Every group is stopped at the end by
the process-group id this module started it under.

The daemon runs on the machine's clock (``agg_pipeline.core.clock`` is frozen only in-process),
so "late" and "while the daemon was down" are readings whose times lie in hours that
have already closed and settled.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
import yaml

from agg_pipeline import launch
from agg_pipeline.config.catalogue import load_catalogue
from agg_pipeline.serving.api import create_app
from agg_pipeline.serving.api.etl import RunRequest
from agg_pipeline_tests import data, reference
from agg_pipeline_tests.conftest import create_database, drop_database
from agg_pipeline_tests.serving.test_api import serving
from agg_pipeline_tests.warehouse.test_rollups import assert_matches, table
from agg_pipeline_tests.warehouse.test_self_healing import assert_equals_raw, late_rows

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
RUNS = "{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }"
HEALER_TAG = {"key": "dagster/sensor_name", "value": "self_healing_sensor"}
LOCATION = "agg_pipeline"  # workspace.yaml's location name, as under `dagster dev`


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


class Group:
    """One command in its own process group, output to a log file."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], log_path: Path) -> None:
        self.log: IO[str] = open(log_path, "a")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        """Stop every process of the group, forcibly if it does not stop within a minute."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.log.close()


def _exe(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@dataclass
class Deployment:
    """The module's deployment: warehouse engine, webserver port, and the daemon."""

    engine: sa.Engine
    port: int
    env: dict[str, str]
    workspace: Path
    project_root: Path
    logs: Path
    daemon: Group | None = None

    def start_daemon(self) -> None:
        self.daemon = Group(
            [_exe("dagster-daemon"), "run", "-w", str(self.workspace)],
            self.project_root,
            self.env,
            self.logs / "daemon.log",
        )

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def runs(self) -> list[dict]:
        return graphql(self.port, RUNS)["runsOrError"]["results"]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 1.0):
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


def _midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


def last_week(now: datetime) -> datetime:
    """Monday of the week of (now - 7 days): where the healing window starts, and a week
    that is complete (its Saturday and Sunday are history already in the warehouse)."""
    week = _midnight((now - timedelta(days=7)).date())
    return week - timedelta(days=week.weekday())


def unseeded_days(now: datetime) -> list[datetime]:
    """The last settled days that are not last week's seeded weekend, newest first (on a
    Monday or a Tuesday they fall into last week: still distinct, settled days)."""
    end, saturday = settled_days_end(now), last_week(now) + timedelta(days=5)
    days = [end - timedelta(days=n) for n in range(1, 5)]
    return [d for d in days if not saturday <= d < saturday + timedelta(days=2)]


def settled_days_end(now: datetime) -> datetime:
    """End of the days the healing tests check: up to the day before yesterday (always
    past its 01:45 due time), and on a Monday through Sunday (last week whole)."""
    return max(_midnight(now.date() - timedelta(days=1)), last_week(now) + timedelta(days=7))


@pytest.fixture(scope="module")
def deployment(pg_server_url: str, project_root: Path, tmp_path_factory) -> Iterator[Deployment]:
    now = datetime.now(UTC)
    if now < last_week(now) + timedelta(days=7, hours=2, minutes=30):
        pytest.skip("last week is not due for its weekly rollup yet (Monday before 02:30)")
    tmp = tmp_path_factory.mktemp("e2e")
    tag = uuid.uuid4().hex[:8]
    warehouse = create_database(pg_server_url, f"agge2e_wh_{tag}")
    storage = create_database(pg_server_url, f"agge2e_dg_{tag}")
    engine = sa.create_engine(warehouse)
    from agg_pipeline.demo import readings as simulator
    from agg_pipeline.warehouse import migrate

    migrate.migrate(engine)
    simulator.write_demo_crops(engine)  # the bands the pandas reference expects (BANDS)
    # History for the backfill (outside the healing window, so the healer leaves it to
    # the backfill) and last week's weekend for the healer's first fill.
    data.seed(engine, start=data.DAY0, days=1, devices=2, hz=0.01)
    data.seed(engine, start=last_week(now) + timedelta(days=5), days=2, devices=2, hz=0.005)

    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(project_root / "dagster.yaml", home / "dagster.yaml")
    grpc_port, port = free_port(), free_port()
    workspace = tmp / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "grpc_server": {
                            "host": "127.0.0.1",
                            "port": grpc_port,
                            "location_name": LOCATION,
                        }
                    }
                ]
            }
        )
    )
    env = {
        **os.environ,
        "DATABASE_URL": warehouse,
        "DAGSTER_PG_URL": storage,
        "DAGSTER_HOME": str(home),
        # The healer and the schedules of the levels it heals on (a switch off also
        # stops its level's first fill); the schedules only touch the open hour /
        # yesterday. Jobs no test here looks at stay off, to keep the 2 cores free.
        "AGG_PIPELINE_LATE_DATA_SENSOR": "true",
        # Ticks every 10 s instead of 30: a round (hour, then day, then week: three
        # ticks) takes a third of the time; the order the test proves is the same.
        "AGG_PIPELINE_HEALING_INTERVAL_SECONDS": "10",
        "AGG_PIPELINE_SCHEDULE_RETENTION": "false",
        "AGG_PIPELINE_SCHEDULE_DASHBOARD_REFRESH": "false",
        "AGG_PIPELINE_SCHEDULE_PATTERNS": "false",
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
        },
    }
    code_server = Group(
        [
            _exe("dagster"),
            "code-server",
            "start",
            "-m",
            "agg_pipeline.definitions",
            "-d",
            str(project_root),
            "-h",
            "127.0.0.1",
            "-p",
            str(grpc_port),
            "--location-name",
            LOCATION,
        ],
        project_root,
        env,
        tmp / "code-server.log",
    )
    webserver = Group(
        [_exe("dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)],
        project_root,
        env,
        tmp / "webserver.log",
    )
    dep = Deployment(engine, port, env, workspace, project_root, tmp)
    dep.start_daemon()
    try:
        wait_for(
            lambda: graphql(port, "{ assetNodes { assetKey { path } } }")["assetNodes"],
            timeout=180,
            what="the webserver to serve the asset graph",
        )
        yield dep
    finally:
        dep.stop_daemon()
        webserver.stop()
        code_server.stop()
        engine.dispose()
        drop_database(pg_server_url, f"agge2e_wh_{tag}")
        drop_database(pg_server_url, f"agge2e_dg_{tag}")


def equal_to_raw(engine: sa.Engine, start: datetime, end: datetime) -> bool:
    try:
        assert_equals_raw(engine, start, end)
    except AssertionError:
        return False
    return True


def test_backfill_through_the_daemon(deployment: Deployment):
    port, engine = deployment.port, deployment.engine
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
    backfill_runs = [
        r
        for r in deployment.runs()
        if any(t["key"] == "dagster/backfill" and t["value"] == backfill_id for t in r["tags"])
    ]
    assert len(backfill_runs) == 1 and backfill_runs[0]["status"] == "SUCCESS"
    raw = reference.load_raw(engine, data.DAY0, data.DAY0 + timedelta(days=1))
    valid = reference.valid_readings(raw, load_catalogue("hydroponics"), datetime.now(UTC))
    got = table(engine, "bi.hourly_sensor_agg", "hour_start")
    # (the healer's first fill of last week shares the table)
    got = got[(got["bucket"] >= data.DAY0) & (got["bucket"] < data.DAY0 + timedelta(days=1))]
    assert_matches(got, reference.grouped_stats(valid, valid["time"].dt.floor("1h")))


def test_api_run_launches_what_the_daemon_runs(deployment: Deployment, monkeypatch):
    """GET /api/etl/status sees the running daemon's heartbeat; POST /api/etl/run (issue
    14) over real HTTP submits an asset backfill to this deployment's instance, and the
    cleanup command a queued run: the running daemon completes both (the run as a dry run:
    other tests here share the tables)."""
    from agg_pipeline.definitions import defs  # loads the definitions: only for this test

    monkeypatch.setenv("DAGSTER_PG_URL", deployment.env["DAGSTER_PG_URL"])
    monkeypatch.setenv("AGG_PIPELINE_API_KEY", "e2e-key")
    instance = dg.DagsterInstance.from_config(deployment.env["DAGSTER_HOME"])
    backend = launch.InstanceBackend(defs, instance, deployment.engine, "e2e")
    try:
        with serving(create_app(deployment.engine, backend, dagster_timeout=120)) as base:
            answer = httpx.post(
                f"{base}/api/etl/run",
                json={"command": "hourly", "hours": 2},
                headers={"X-API-Key": "e2e-key"},
                timeout=60,
            )
            # (while the daemon works on it)
            status = httpx.get(f"{base}/api/etl/status", timeout=180).json()
            assert status["scheduler_running"] is True, status  # this daemon's heartbeat
        assert answer.status_code == 202, answer.text
        (backfill_id,) = answer.json()["backfill_ids"]
        steps = launch.plan(defs, RunRequest(command="cleanup", dry_run=True))
        launch.submit(defs, instance, steps, "cleanup")
        run_id = steps[0].id
    finally:
        instance.dispose()

    def finished():
        result = graphql(deployment.port, POLL, {"id": backfill_id})["partitionBackfillOrError"]
        if result["status"] in ("FAILED", "COMPLETED_FAILED", "CANCELED"):
            raise AssertionError(f"backfill ended {result['status']}")
        return result if result["status"] in ("COMPLETED_SUCCESS", "COMPLETED") else None

    assert (
        wait_for(finished, timeout=300, what="the API's backfill", interval=2)["numPartitions"] == 2
    )

    def cleaned():
        (run,) = [r for r in deployment.runs() if r["runId"] == run_id]
        assert run["status"] not in ("FAILURE", "CANCELED"), run
        return run["status"] == "SUCCESS"

    wait_for(cleaned, timeout=300, what="the queued retention run", interval=2)


ROUNDS = 3


def test_self_healing_through_the_daemon(deployment: Deployment):
    """First fill, then three rounds of late readings into two hours of two different
    days and one hour of last week (its seeded Saturday), each healed by the running daemon
    alone (no click): every level from 1m to week, conditions included, ends equal to
    pandas before the next round starts. Three rounds, because a lost trigger or a child
    computed from a stale parent shows only in some interleavings of ticks and runs."""
    engine = deployment.engine
    now = datetime.now(UTC)
    week, end = last_week(now), settled_days_end(now)
    saturday = week + timedelta(days=5)
    day_a, day_b = unseeded_days(now)[:2]
    started = time.monotonic()

    def healed() -> bool:
        return equal_to_raw(engine, week, end)

    wait_for(healed, timeout=300, what="the first fill", interval=5)
    timings = [f"first fill {time.monotonic() - started:.0f} s"]
    for i in range(ROUNDS):
        data.insert(engine, late_rows(day_a + timedelta(hours=10 + i)))
        data.insert(engine, late_rows(day_b + timedelta(hours=3 + i), device="arduino_002"))
        data.insert(engine, late_rows(saturday + timedelta(hours=14 + i)))
        inserted = time.monotonic()
        assert not healed()
        wait_for(
            healed,
            timeout=300,
            what=f"round {i + 1}: hour, day and week to heal",
            interval=3,
        )
        timings.append(f"round {i + 1} {time.monotonic() - inserted:.0f} s")
    by_healer = [r for r in deployment.runs() if HEALER_TAG in r["tags"]]
    # First fill (hours, days, week), then per round at least one hourly, daily and
    # weekly run.
    assert len(by_healer) >= 3 + 3 * ROUNDS, by_healer
    # (the last may still be finishing: the data was already right)
    assert not [r for r in by_healer if r["status"] in ("FAILURE", "CANCELED")], by_healer
    print(f"{'; '.join(timings)}; {len(by_healer)} healing runs")


def test_catch_up_after_the_daemon_was_down(deployment: Deployment):
    """The daemon stops; three hours of readings arrive, into hours that held none (so
    their partitions are missing, not stale) and that close and settle meanwhile; the
    daemon starts again and, with no click and no cursor, fills the hours and the day."""
    engine = deployment.engine
    now = datetime.now(UTC)
    day = unseeded_days(now)[0]
    hours = day + timedelta(hours=20)
    with engine.connect() as conn:
        before = conn.execute(
            sa.text("SELECT count(*) FROM raw.readings WHERE time >= :s AND time < :e"),
            {"s": hours, "e": hours + timedelta(hours=3)},
        ).scalar_one()
    assert before == 0  # missing partitions, not changed ones

    deployment.stop_daemon()
    data.seed(engine, start=hours, days=3 / 24, devices=2, hz=0.01, seed=11)
    assert not equal_to_raw(engine, day, day + timedelta(days=1))

    deployment.start_daemon()
    restarted = time.monotonic()
    wait_for(
        lambda: equal_to_raw(engine, day, day + timedelta(days=1)),
        timeout=300,
        what="the hours and the day to fill after the restart",
        interval=3,
    )
    print(f"caught up {time.monotonic() - restarted:.0f} s after the daemon started")
