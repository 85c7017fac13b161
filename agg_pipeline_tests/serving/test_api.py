"""The HTTP API (issue 14) over real HTTP: a uvicorn server on a free port in this process,
httpx as the client, a real PostgreSQL seeded with two days and the current hours of an
oil-well fleet, and a real Dagster instance for the ETL endpoints. Each answer is compared
with pandas over the raw readings or SQL over the rollup tables."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import httpx
import hypothesis
import pandas as pd
import pytest
import schemathesis
import sqlalchemy as sa
import uvicorn

from agg_pipeline.config.catalogue import load_catalogue
from agg_pipeline.config.settings import Settings
from agg_pipeline.core.windows import Window
from agg_pipeline.demo import readings as simulator
from agg_pipeline.launch import InstanceBackend
from agg_pipeline.serving import dashboard
from agg_pipeline.serving.api import create_app
from agg_pipeline.serving.api import etl as etl_api
from agg_pipeline.sources import readings_source
from agg_pipeline.warehouse.engine import WarehouseResource, engine_for
from agg_pipeline.warehouse.writes import devices as writers_devices
from agg_pipeline.warehouse.writes import readings as writers
from agg_pipeline_tests import reference
from agg_pipeline_tests.conftest import SESSION_TAG, create_database, drop_database

OIL = load_catalogue("oil_well")
NOW = datetime.now(UTC)
HOUR = NOW.replace(minute=0, second=0, microsecond=0)
DAY0 = HOUR.replace(hour=0) - timedelta(days=2)  # two complete UTC days before today
KEY = "s3cret-key-42"


@contextmanager
def serving(app) -> Iterator[str]:
    """``app`` on a real uvicorn server on a free port, in a thread; its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def seeded(pg_server_url, template_db) -> Iterator[str]:
    """Oil wells from DAY0 to now: hours before the last complete one materialized (so the
    last complete hour and the open one are live), two days rolled up, metrics, diagnoses,
    and execution metrics of one workspace."""
    name = f"aggapi_{SESSION_TAG}_{uuid.uuid4().hex[:8]}"
    url = create_database(pg_server_url, name, template=template_db)
    engine = engine_for(url)
    days = (NOW - DAY0).total_seconds() / 86400
    simulator.write(
        engine, OIL, simulator.SimulationSpec(start=DAY0, days=days, devices=3, hz=0.01, seed=7)
    )
    warehouse = WarehouseResource(database_url=url)
    s = Settings()
    ctx = writers.WriteContext(warehouse, readings_source(OIL, engine, s.parallelism), OIL, s)
    hours = Window(DAY0, HOUR - timedelta(hours=1))
    writers.write_readings_1m(ctx, hours)
    writers.write_merged_level(ctx, writers.LEVEL_HOURLY, hours)
    writers.write_daily(ctx, Window(DAY0, DAY0 + timedelta(days=2)))
    writers_devices.write_device_performance(ctx, hours)
    simulator.write_diagnostics(engine, OIL, DAY0, 2, devices=3, per_device_per_day=20)
    writers_devices.write_diagnostic_summary(ctx, Window(DAY0, DAY0 + timedelta(days=2)))
    with engine.begin() as conn:
        for table, column, step in (
            ("execution_metrics_hourly", "hour_start", "1 hour"),
            ("execution_metrics_daily", "metric_date", "1 day"),
        ):
            conn.execute(
                sa.text(
                    f"INSERT INTO analytics.{table} SELECT 'ws-1', g, 10 + i, 8, 1, 1 + i, 80, "
                    "100 * i, 1, 900, 50, 800, 2.5 * i, 3 FROM generate_series(1, 40) AS i, "
                    f"LATERAL (SELECT (:t - i * interval '{step}')::"
                    f"{'date' if column == 'metric_date' else 'timestamptz'} AS g) AS p"
                ),
                {"t": HOUR},
            )
    yield url
    engine.dispose()
    drop_database(pg_server_url, name)


@pytest.fixture(scope="module")
def instance(tmp_path_factory) -> Iterator[dg.DagsterInstance]:
    inst = dg.DagsterInstance.local_temp(str(tmp_path_factory.mktemp("dagster_home")))
    yield inst
    inst.dispose()


@pytest.fixture(scope="module")
def base(seeded, instance) -> Iterator[str]:
    from agg_pipeline.definitions import defs

    engine = engine_for(seeded)
    backend = InstanceBackend(defs, instance, engine, "test")
    # status waits up to 30 s for the instance here (5 s by default): a loaded CI machine
    with serving(create_app(engine, backend, dagster_timeout=30)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=30) as c:
        yield c


def _sql(url: str, query: str, **params) -> pd.DataFrame:
    with engine_for(url).connect() as conn:
        return pd.read_sql(sa.text(query), conn, params=params)


# ------------------------------------------------------------------------- analytics


def test_hourly_matches_raw_across_the_materialized_live_seam(client, seeded):
    answer = client.get("/api/v1/analytics/wells/WELL-002/hourly", params={"hours": 6})
    assert answer.status_code == 200
    assert answer.headers["server-timing"].startswith("app;dur=")
    body = answer.json()
    assert body["device"] == "WELL-002" and body["count"] == len(body["data"])
    got = pd.DataFrame(body["data"])
    got["hour_start"] = pd.to_datetime(got["hour_start"], utc=True)

    since = datetime.now(UTC) - timedelta(hours=6)
    raw = reference.load_raw(engine_for(seeded), since - timedelta(hours=1), NOW + timedelta(1))
    valid = reference.valid_readings(raw, OIL, datetime.now(UTC) + timedelta(minutes=5))
    valid = valid[valid.device == "WELL-002"]
    valid["hour_start"] = valid["time"].dt.floor("1h")
    want = (
        valid[valid.hour_start >= pd.Timestamp(since).floor("1h") + pd.Timedelta(hours=1)]
        .groupby(["hour_start", "field"])["value"]
        .agg(["count", "mean", "min", "max"])
        .reset_index()
    )
    merged = want.merge(got, on=["hour_start", "field"], how="outer", indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"]
    assert (merged["count"] == merged["sample_count"]).all()
    assert merged["mean"].to_numpy() == pytest.approx(merged["avg_value"].to_numpy(), rel=1e-9)
    assert (merged["min"] == merged["min_value"]).all()
    # The seam: the last complete hour and the open one come live from raw, older ones
    # from the rollup table - and both sides match raw above.
    live = dict(zip(got["hour_start"], got["live"], strict=False))
    assert live[pd.Timestamp(HOUR)] and live[pd.Timestamp(HOUR - timedelta(hours=1))]
    assert not live[pd.Timestamp(HOUR - timedelta(hours=2))]
    # /devices/ is the same endpoint
    alias = client.get("/api/v1/analytics/devices/WELL-002/hourly", params={"hours": 6}).json()
    assert len(alias["data"]) == len(body["data"])


def test_daily_performance_diagnostics_rankings_match_the_tables(client, seeded):
    daily = client.get("/api/v1/analytics/wells/WELL-001/daily", params={"days": 30}).json()
    want = _sql(
        seeded,
        "SELECT metric_date, field, avg_value, sample_count, time_in_optimal_pct "
        "FROM bi.v_daily_readings WHERE device_code = 'WELL-001' ORDER BY 1, 2",
    )
    assert len(want) == 2 * len(OIL.fields) == daily["count"]
    got = pd.DataFrame(daily["data"])
    assert list(got["metric_date"]) == [d.isoformat() for d in want["metric_date"]]
    assert list(got["sample_count"]) == list(want["sample_count"])
    assert got["avg_value"].to_numpy() == pytest.approx(want["avg_value"].to_numpy())

    perf = client.get("/api/v1/analytics/wells/WELL-003/performance", params={"hours": 744})
    want = _sql(
        seeded,
        "SELECT count(*) AS n, sum(value) AS total FROM bi.v_device_performance_hourly "
        "WHERE device_code = 'WELL-003' AND hour_start >= now() - interval '744 hours'",
    )
    got = pd.DataFrame(perf.json()["data"])
    assert len(got) == want.n[0] > 0 and got["value"].sum() == pytest.approx(want.total[0])

    diag = client.get("/api/v1/analytics/diagnostics/summary", params={"days": 7}).json()
    want = _sql(
        seeded,
        "SELECT device_code, sum(diagnostics_count) AS n FROM bi.v_diagnostic_summary_daily "
        "GROUP BY 1 ORDER BY 1",
    )
    got = pd.DataFrame(diag["data"]).groupby("device_code")["diagnostics_count"].sum()
    assert got.to_dict() == dict(zip(want.device_code, want.n, strict=True))

    everyone = client.get("/api/v1/analytics/wells/performance/all", params={"hours": 72}).json()
    want = _sql(
        seeded,
        "SELECT device_code, avg(value) AS v FROM bi.v_device_performance_hourly WHERE metric "
        "= 'efficiency' AND hour_start >= now() - interval '72 hours' GROUP BY 1 ORDER BY 2 DESC",
    )
    eff = {r["device_code"]: r["value"] for r in everyone["data"] if r["metric"] == "efficiency"}
    assert eff == pytest.approx(dict(zip(want.device_code, want.v, strict=True)))
    ranked = client.get(
        "/api/v1/analytics/wells/ranking/efficiency", params={"hours": 72, "limit": 2}
    ).json()
    assert [r["device_code"] for r in ranked["data"]] == list(want.device_code[:2])
    assert [r["rank"] for r in ranked["data"]] == [1, 2]
    health = client.get("/api/v1/analytics/devices/ranking/health", params={"limit": 100})
    assert health.status_code == 200 and health.json()["metric"] == "health"


def test_execution_metrics_match_the_tables(client, seeded):
    for granularity, table, column in (
        ("hourly", "execution_metrics_hourly", "hour_start"),
        ("daily", "execution_metrics_daily", "metric_date"),
    ):
        answer = client.get(
            "/api/v1/analytics/workspaces/ws-1/executions",
            params={"granularity": granularity, "periods": 5},
        ).json()
        want = _sql(
            seeded,
            f"SELECT {column} AS p, execution_count FROM analytics.{table} "
            f"WHERE workspace_id = 'ws-1' ORDER BY 1 DESC LIMIT 5",
        ).iloc[::-1]
        assert [r["execution_count"] for r in answer["data"]] == list(want.execution_count)
        got = pd.to_datetime([r["period_start"] for r in answer["data"]], utc=True)
        assert list(got) == list(pd.to_datetime(want.p, utc=True))
    weekly = client.get(
        "/api/v1/analytics/workspaces/ws-1/executions", params={"granularity": "weekly"}
    )
    assert weekly.status_code == 404  # no weekly rows written
    bad = client.get(
        "/api/v1/analytics/workspaces/ws-1/executions", params={"granularity": "yearly"}
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "granularity"


@pytest.mark.parametrize(
    ("path", "params", "status", "names"),
    [
        ("/wells/WELL-999/hourly", {}, 404, "WELL-999"),
        ("/devices/WELL-999/daily", {}, 404, "WELL-999"),
        ("/wells/WELL-001/hourly", {"hours": 745}, 422, "hours"),
        ("/wells/WELL-001/hourly", {"hours": 0}, 422, "hours"),
        ("/wells/WELL-001/hourly", {"hours": "abc"}, 422, "hours"),
        ("/wells/WELL-001/daily", {"days": 367}, 422, "days"),
        ("/wells/WELL-001/daily", {"days": "1.5"}, 422, "days"),
        ("/wells/ranking/health", {"limit": 101}, 422, "limit"),
        ("/wells/ranking/efficiency", {"limit": 0}, 422, "limit"),
        ("/diagnostics/summary", {"days": -1}, 422, "days"),
        ("/diagnostics/summary", {"device": "nope"}, 404, "nope"),
        ("/wells/WELL-001%00x/hourly", {}, 422, "device"),
    ],
)
def test_bad_requests_get_a_clear_answer(client, path, params, status, names):
    answer = client.get(f"/api/v1/analytics{path}", params=params)
    assert answer.status_code == status, answer.text
    assert names in answer.text
    assert "server-timing" in answer.headers


def test_daily_counts_local_days_of_the_configured_zone(monkeypatch):
    # A zone whose date differs from UTC's right now: UTC-11 before 11:00 UTC, else UTC+14.
    zone = "Pacific/Pago_Pago" if datetime.now(UTC).hour < 11 else "Pacific/Kiritimati"
    monkeypatch.setenv("AGG_PIPELINE_TIMEZONE", zone)
    local = datetime.now(ZoneInfo(zone)).date()
    assert local != datetime.now(UTC).date()
    assert dashboard._today(None) == local


def test_warehouse_outage_is_503_without_internals(tmp_path):
    down = sa.create_engine(f"postgresql+psycopg2://nobody@/nodb?host={tmp_path}/no-socket")
    with serving(create_app(down)) as base, httpx.Client(base_url=base, timeout=30) as c:
        answer = c.get("/api/v1/analytics/wells/WELL-001/hourly")
        assert answer.status_code == 503
        assert answer.json() == {"detail": "warehouse unavailable"}
        assert "no-socket" not in answer.text and "psycopg2" not in answer.text
        status = c.get("/api/etl/status")
        assert status.status_code == 200
        body = status.json()
        assert body["pg_connected"] is False and body["ok"] is False
        assert body["scheduler_running"] is None and body["dagster_reachable"] is False


# ------------------------------------------------------------------------------- ETL


def test_etl_status_reports_warehouse_and_instance(client, seeded, monkeypatch):
    monkeypatch.delenv("INFLUXDB_URL", raising=False)
    answer = client.get("/api/etl/status")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    counts = _sql(
        seeded,
        "SELECT (SELECT count(*) FROM iot.sensors) AS sensors, "
        "(SELECT count(*) FROM bi.hourly_sensor_agg) AS hourly, "
        "(SELECT count(*) FROM bi.daily_sensor_agg) AS daily, "
        "(SELECT complete_until FROM ops.watermarks WHERE table_name = 'bi.hourly_sensor_agg') "
        "AS mark",
    ).iloc[0]
    assert body["initialized"] and body["pg_connected"] and body["dagster_reachable"]
    assert body["sensor_mappings"] == counts.sensors == 3 * len(OIL.fields)
    assert body["row_counts"] == {"hourly_rows": counts.hourly, "daily_rows": counts.daily}
    mark = pd.Timestamp(body["watermarks"]["etl_hourly_watermark"]["timestamp"])
    assert mark == pd.Timestamp(counts.mark) == pd.Timestamp(HOUR - timedelta(hours=1))
    assert body["scheduler_running"] is False  # no daemon heartbeat in this instance
    assert body["influx_connected"] is None  # no InfluxDB configured
    # The findings of `agg-pipeline status`: nothing ran in this instance, so partitions
    # are missing and it is not ok.
    assert body["ok"] is False and body["missing"] and body["problems"]


def test_etl_run_is_disabled_without_a_configured_key(client, instance, monkeypatch):
    monkeypatch.delenv("AGG_PIPELINE_API_KEY", raising=False)
    answer = client.post("/api/etl/run", json={"command": "hourly"}, headers={"X-API-Key": "x"})
    assert answer.status_code == 503 and "disabled" in answer.json()["detail"]


def test_etl_run_refuses_missing_or_wrong_keys_and_launches_nothing(
    client, instance, monkeypatch, caplog
):
    monkeypatch.setenv("AGG_PIPELINE_API_KEY", KEY)
    before = (len(instance.get_backfills()), len(instance.get_runs()))
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY[:-1]}, {"X-API-Key": b"\xe9"}):
        answer = client.post("/api/etl/run", json={"command": "full"}, headers=headers)
        assert answer.status_code == 401, (headers, answer.text)
    # refused before the body is even read: a bad body without the key is still 401
    assert client.post("/api/etl/run", json={"command": "rm -rf"}).status_code == 401
    assert (len(instance.get_backfills()), len(instance.get_runs())) == before
    assert KEY not in caplog.text


def _targets(backfill) -> set[str]:
    subset = backfill.asset_backfill_data.target_subset
    return {p.partition_key for p in subset.iterate_asset_partitions()}


def test_etl_run_with_the_key_launches_through_the_instance(client, seeded, instance, monkeypatch):
    monkeypatch.setenv("AGG_PIPELINE_API_KEY", KEY)
    auth = {"X-API-Key": KEY}
    bad = client.post("/api/etl/run", json={"command": "hourly", "hours": 745}, headers=auth)
    assert bad.status_code == 422 and "hours" in bad.text

    dry = client.post(
        "/api/etl/run", json={"command": "backfill", "days": 1, "dry_run": True}, headers=auth
    )
    assert dry.status_code == 200, dry.text
    hourly_step, daily_step = dry.json()["steps"]
    hours_since_yesterday = 24 + HOUR.hour  # every complete hour from yesterday 00:00 on
    assert len(hourly_step["partitions"]) == hours_since_yesterday
    assert daily_step["partitions"] == [f"{HOUR - timedelta(days=1):%Y-%m-%d}"]
    assert hourly_step["estimated_rows"] == hours_since_yesterday * 3 * len(OIL.fields)
    assert dry.json()["backfill_ids"] == [] and instance.get_backfills() == []

    answer = client.post("/api/etl/run", json={"command": "full"}, headers=auth)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert len(body["backfill_ids"]) == 2 and len(body["run_ids"]) == 1
    hourly_bf = instance.get_backfill(body["backfill_ids"][0])
    hours = [HOUR - timedelta(hours=h) for h in (3, 2, 1)]
    assert hourly_bf.is_asset_backfill and hourly_bf.status.value == "REQUESTED"
    assert _targets(hourly_bf) == {f"{h:%Y-%m-%d-%H:%M}" for h in hours}
    assert {k.to_user_string() for k in hourly_bf.asset_selection} >= {
        "readings_1m",
        "rollup_hourly",
    }
    daily_bf = instance.get_backfill(body["backfill_ids"][1])
    today = HOUR.replace(hour=0)
    assert _targets(daily_bf) == {f"{today - timedelta(days=d):%Y-%m-%d}" for d in (2, 1)}
    run = instance.get_run_by_id(body["run_ids"][0])
    assert run.job_name == "retention_cleanup" and run.status == dg.DagsterRunStatus.QUEUED
    assert run.remote_job_origin.location_name == "agg_pipeline"  # the daemon's location
    assert run.tags["agg_pipeline/command"] == "full"


# ---------------------------------------------------------------- OpenAPI conformance


def test_every_endpoint_conforms_to_its_openapi_schema(base, monkeypatch):
    """Generated requests (valid and not) to every operation of /openapi.json: no 500,
    every answer (status, headers, body) as the schema documents it. The run endpoint's
    key is a random one no generated request carries (401), so nothing is launched.
    (schemathesis' pytest plugin does not load under this pytest; its Python API does
    the same per operation.)"""
    monkeypatch.setenv("AGG_PIPELINE_API_KEY", uuid.uuid4().hex)
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 16
    for operation in operations:

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=12,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            database=None,
            derandomize=True,
        )
        def check(case) -> None:
            case.call_and_validate()

        check()


class _HangingInstance:
    """A Dagster side that answers only after ``delay`` seconds (a storage stuck in
    connection retries); what it finally says is a healthy instance."""

    def __init__(self, delay: float) -> None:
        self.delay, self.calls = delay, 0

    def dagster_side(self):
        self.calls += 1
        time.sleep(self.delay)
        return etl_api.DagsterSide(
            dagster_reachable=True, scheduler_running=True, influx_connected=None, ok=True
        )

    def run(self, request):
        raise AssertionError("not called")


def test_etl_status_answers_while_the_instance_hangs(seeded):
    backend = _HangingInstance(delay=1.5)
    app = create_app(engine_for(seeded), backend, dagster_timeout=0.2)
    with serving(app) as base, httpx.Client(base_url=base, timeout=30) as c:
        started = time.monotonic()
        first = c.get("/api/etl/status").json()
        assert time.monotonic() - started < 1.2  # did not wait for the instance
        assert first["pg_connected"] is True and first["dagster_reachable"] is False
        assert first["scheduler_running"] is None
        assert "not answering within 0.2 s" in " ".join(first["problems"])
        second = c.get("/api/etl/status").json()  # the same computation, still running
        assert second["dagster_reachable"] is False and backend.calls == 1
        time.sleep(1.6)
        late = c.get("/api/etl/status").json()  # its late answer serves the next requests
        assert late["dagster_reachable"] is True and late["scheduler_running"] is True
        assert backend.calls == 1
