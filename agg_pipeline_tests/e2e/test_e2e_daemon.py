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
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
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
from agg_pipeline.warehouse.engine import WarehouseResource
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
# AGG_PIPELINE_BACKFILL_PARTITIONS_PER_RUN of this deployment: a day of hours per run, so a
# one-day backfill is still one run and a three-day one splits into three.
PER_RUN = 24
HOURLY = ("readings_1m", "readings_5m", "rollup_hourly")
BACKFILL_DAYS = 3  # seeded from data.DAY0: three runs
RAISED_POOL = "bi.readings_1m"  # readings_1m's pool, the table its writes lock


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
    data.seed(engine, start=data.DAY0, days=BACKFILL_DAYS, devices=2, hz=0.005)
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
        # Backfills split into runs (test_backfill_through_the_daemon). The healer
        # sends runs with range tags, not backfills: its runs are the same either way.
        "AGG_PIPELINE_BACKFILL_PARTITIONS_PER_RUN": str(PER_RUN),
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


def launch_backfill(port: int, assets: Sequence[str], partitions: list[str], title: str) -> str:
    """Launch a partition backfill through GraphQL, as the UI's "Materialize > backfill"."""
    launched = graphql(
        port,
        LAUNCH,
        {
            "params": {
                "assetSelection": [{"path": [name]} for name in assets],
                "partitionNames": partitions,
                "title": title,
            }
        },
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def wait_for_backfill(port: int, backfill_id: str, what: str) -> dict:
    def finished():
        result = graphql(port, POLL, {"id": backfill_id})["partitionBackfillOrError"]
        assert result["__typename"] == "PartitionBackfill", result
        if result["status"] in ("FAILED", "COMPLETED_FAILED", "CANCELED"):
            raise AssertionError(f"backfill ended {result['status']}")
        return result if result["status"] in ("COMPLETED_SUCCESS", "COMPLETED") else None

    return wait_for(finished, timeout=300, what=what, interval=2)


def hour_keys(start: datetime, hours: int) -> list[str]:
    return [(start + timedelta(hours=h)).strftime("%Y-%m-%d-%H:%M") for h in range(hours)]


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Seconds two [start, end] spans share (negative: the gap between them)."""
    return min(a[1], b[1]) - max(a[0], b[0])


def _step_spans(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    """Each step's [STEP_START, end] in the run's event log (end: now while it runs)."""
    spans: dict[str, tuple[float, float]] = {}
    for entry in instance.all_logs(
        run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}
    ):
        if entry.dagster_event_type == dg.DagsterEventType.STEP_START:
            spans[entry.step_key] = (entry.timestamp, time.time())
        else:
            spans[entry.step_key] = (spans[entry.step_key][0], entry.timestamp)
    return spans


def test_backfill_through_the_daemon(deployment: Deployment, monkeypatch):
    """Issue 15, parallel backfills: a backfill of the hourly assets over BACKFILL_DAYS,
    launched through GraphQL with AGG_PIPELINE_BACKFILL_PARTITIONS_PER_RUN=24, under the
    shipped dagster.yaml except for one pool raised as README says (bi.readings_1m to 2, as
    `dagster instance concurrency set` does):

    (a) one run per day, the three assets in each, the runs' ranges disjoint;
    (b) two runs in flight at once, both writing bi.readings_1m: the test holds the days'
        advisory locks on it until both runs' 1m steps have started, so neither can end
        first; while the 5m and hourly steps, whose pools keep the default limit 1, never
        overlap across runs;
    (c) every (asset, hour) materialized exactly once, and 1m, 5m and hourly over the
        window equal pandas over raw.
    """
    port, engine = deployment.port, deployment.engine
    start, end = data.DAY0, data.DAY0 + timedelta(days=BACKFILL_DAYS)
    hours = hour_keys(start, 24 * BACKFILL_DAYS)
    monkeypatch.setenv("DAGSTER_PG_URL", deployment.env["DAGSTER_PG_URL"])
    instance = dg.DagsterInstance.from_config(deployment.env["DAGSTER_HOME"])
    warehouse = WarehouseResource(database_url=deployment.env["DATABASE_URL"])
    # The window's days, and one either side in case the local zone is not UTC.
    days = [(start + timedelta(days=d)).date() for d in range(-1, BACKFILL_DAYS + 1)]
    try:
        instance.event_log_storage.set_concurrency_slots(RAISED_POOL, 2)
        with warehouse.locked_transaction(RAISED_POOL, days):
            backfill_id = launch_backfill(port, HOURLY, hours, "e2e parallel backfill")

            def runs() -> list[dg.RunRecord]:
                return list(
                    instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
                )

            def both_writing() -> list[dg.RunRecord]:
                writing = [
                    r
                    for r in runs()
                    if "readings_1m" in _step_spans(instance, r.dagster_run.run_id)
                ]
                return writing if len(writing) >= 2 else []

            wait_for(both_writing, timeout=240, what="two runs writing bi.readings_1m", interval=1)
            gated = time.monotonic()
        # (the locks are released: the runs write, the rest of the backfill follows)
        done = wait_for_backfill(port, backfill_id, "the backfill to complete")
        print(f"backfill done {time.monotonic() - gated:.0f} s after the gate opened")
        records = runs()
        steps = {r.dagster_run.run_id: _step_spans(instance, r.dagster_run.run_id) for r in records}
        written = {
            name: Counter(
                m.partition_key
                for m in instance.fetch_materializations(
                    dg.AssetRecordsFilter(dg.AssetKey(name), asset_partitions=hours), limit=1000
                ).records
            )
            for name in HOURLY
        }
    finally:
        # Back to dagster.yaml's default_limit for the tests after this one.
        instance.event_log_storage.delete_concurrency_limit(RAISED_POOL)
        instance.dispose()
    assert done["numPartitions"] == len(hours)

    # (a) ceil(hours / PER_RUN) runs, each of the three assets over its run's range: every
    # (asset, hour) in exactly one run, no run over more than PER_RUN hours.
    t0 = min(r.start_time for r in records)
    timeline = []
    covered: Counter[tuple[str, str]] = Counter()
    for r in sorted(records, key=lambda r: r.start_time):
        run = r.dagster_run
        assert run.status == dg.DagsterRunStatus.SUCCESS, run.run_id
        first = run.tags["dagster/asset_partition_range_start"]
        last = run.tags["dagster/asset_partition_range_end"]
        run_hours = hours[hours.index(first) : hours.index(last) + 1]
        assert len(run_hours) <= PER_RUN
        covered.update((a.to_user_string(), h) for a in run.asset_selection for h in run_hours)
        timeline.append(
            f"{first}..{last}: run {r.start_time - t0:.1f}..{r.end_time - t0:.1f} s ("
            + ", ".join(
                f"{k} {a - t0:.1f}..{b - t0:.1f}" for k, (a, b) in steps[run.run_id].items()
            )
            + ")"
        )
    print("; ".join(timeline))
    assert len(records) == -(-len(hours) // PER_RUN), timeline
    assert covered == Counter({(a, h): 1 for a in HOURLY for h in hours}), timeline
    # (b) two runs in flight at once (run records), both in their 1m step at once; the
    # steps whose pools keep limit 1 never overlap across runs.
    spans = [(r.start_time, r.end_time) for r in records]
    assert max(_overlap(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :]) > 0
    for name in HOURLY:
        by_run = [s[name] for s in steps.values()]
        overlaps = [_overlap(a, b) for i, a in enumerate(by_run) for b in by_run[i + 1 :]]
        if name == "readings_1m":
            assert max(overlaps) > 0, timeline
        else:
            # Step times are event timestamps: with event batching a step's end is stamped
            # when its batch is stored, a moment after the pool slot is given back.
            assert max(overlaps) <= 1.0, (name, timeline)
    # (c) every partition materialized once, and the numbers equal pandas over raw.
    assert written == {name: Counter(dict.fromkeys(hours, 1)) for name in HOURLY}
    raw = reference.load_raw(engine, start, end)
    valid = reference.valid_readings(raw, load_catalogue("hydroponics"), datetime.now(UTC))
    for name, key, mean, freq in (
        ("bi.readings_1m", "window_start", "mean_value", "1min"),
        ("bi.readings_5m", "window_start", "mean_value", "5min"),
        ("bi.hourly_sensor_agg", "hour_start", "avg_value", "1h"),
    ):
        got = table(engine, name, key, mean=mean)
        # (the healer's first fill of last week shares the tables)
        got = got[(got["bucket"] >= start) & (got["bucket"] < end)]
        expected = reference.grouped_stats(valid, valid["time"].dt.floor(freq))
        assert_matches(got, expected, median=freq == "1h")


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

    done = wait_for_backfill(deployment.port, backfill_id, "the API's backfill")
    assert done["numPartitions"] == 2

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
