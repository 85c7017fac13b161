"""InfluxDB 2.x as source and sink, without an InfluxDB server.

The real ``influxdb-client`` talks over a socket to a local protocol server
(``influx_server.FakeInflux``). These tests pin the contract: the exact Flux we send
(golden files, validated by InfluxData's own parser and type checker), the exact line
protocol and headers we write, how we read InfluxDB's annotated CSV (empty, several
tables and results, an error inside a 200), and how we fail (401, 404, 429 / 503 with
Retry-After, a connection reset). End to end, the bi tables built from the InfluxDB
source equal those built from PostgreSQL over the same readings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa

from agg_pipeline.config.catalogue import CatalogueError, load_catalogue, parse_catalogue
from agg_pipeline.config.settings import Settings
from agg_pipeline.core.windows import Window, day_window
from agg_pipeline.influx import flux
from agg_pipeline.influx import sink as influx_sink
from agg_pipeline.influx.client import InfluxError, InfluxResource
from agg_pipeline.serving import patterns
from agg_pipeline.sources import readings_source
from agg_pipeline.sources.influx import InfluxReadingsSource
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline.warehouse.writes import readings as writers
from agg_pipeline_tests import data
from agg_pipeline_tests.influx_server import FakeInflux, Fault, readings_to_points

HERE = Path(__file__).parent.parent  # agg_pipeline_tests/ (flux/ lives there)
GOLDEN = HERE / "flux" / "golden"
FLUXCHECK = HERE / "flux" / "fluxcheck.mjs"
LSP = HERE / "flux" / "node_modules" / "@influxdata" / "flux-lsp-browser"

HYDRO = load_catalogue("hydroponics")
INFLUX_HYDRO = parse_catalogue(
    HYDRO.model_dump_json(exclude={"source", "influx_sink"})[:-1]
    + ',"source": {"kind": "influxdb", "bucket": "hydroponics", '
    '"measurement": "sensor_readings", "device_tag": "sensor_tag"}}',
    "influx-hydroponics",
)


@pytest.fixture
def influx(httpserver) -> FakeInflux:
    return FakeInflux(httpserver)


def resource(fake: FakeInflux, **kw) -> InfluxResource:
    return InfluxResource(url=fake.url, token=fake.token, org=fake.org, **kw)


# --------------------------------------------------------------------- the Flux we send
def _queries() -> dict[str, str]:
    """Every shape of query the project generates, with fixed parameters."""
    s = datetime(2026, 11, 22, tzinfo=UTC)
    bounds = {"ph": (0.0, 14.0), "ec": (0.0, 10.0)}
    bands = {"ph": (5.5, 6.5, 5.0, 7.0), "ec": (1.2, 2.4, 0.5, 3.5)}
    return {
        "partials_1m": flux.partials_1m("hydroponics", "sensor_readings", bounds, s,
                                        s + timedelta(hours=1), timedelta(0)),
        "partials_1m_half_hour_zone": flux.partials_1m(
            "hydroponics", "sensor_readings", bounds, s, s + timedelta(days=1),
            timedelta(minutes=30)),
        "period_summary": flux.period_summary(
            "hydroponics", "sensor_readings", "sensor_tag", bounds, bands, s,
            s + timedelta(days=1), s + timedelta(days=2), 300.0),
        "period_summary_open_day": flux.period_summary(
            "hydroponics", "sensor_readings", "sensor_tag", bounds, {"ph": bands["ph"]}, s,
            s + timedelta(days=1), s + timedelta(hours=15, minutes=1), 300.0),
        "period_summary_medians_only": flux.period_summary(
            "water-quality", "water_quality", "sensor_tag", bounds, {}, s,
            s + timedelta(days=7), s + timedelta(days=8), 300.0),
        "period_summary_conditions_only": flux.period_summary(
            "hydroponics", "sensor_readings", "sensor_tag", bounds, {"ph": bands["ph"]}, s,
            s + timedelta(days=1), s + timedelta(days=2), 300.0, with_medians=False),
        "hourly_fingerprints": flux.hourly_fingerprints(
            "hydroponics", "sensor_readings", s - timedelta(days=7), s, timedelta(0)),
        "aggregate_history": flux.aggregate_history(
            "hydroponics_hourly", "sensor_tag", ["ph", "ec"], datetime(1970, 1, 1, tzinfo=UTC),
            s, "sensor_readings"),
        "period_summary_carried_tags": flux.period_summary(
            "water-quality", "water_quality", "sensor_tag", bounds, bands, s,
            s + timedelta(days=1), s + timedelta(days=2), 300.0, tags=("site", "depth")),
        "sink_windows": flux.sink_windows("water-quality", "water_quality_1m", s,
                                          s + timedelta(hours=1)),
        "pattern_rows": flux.pattern_rows("pattern_aggregates_daily", "time_based_daily", s,
                                          s + timedelta(days=7), {}),
        "pattern_rows_filtered": flux.pattern_rows(
            "pattern_aggregates_daily", "co_occurrence_daily", s, s + timedelta(days=30),
            {"device_pair": 'light.a+switch "b" ${x}\\'}),
        "pattern_aggregate_sum": flux.pattern_aggregate(
            "pattern_aggregates_daily", "time_based_daily", "entity_id", "occurrences", "sum", s,
            s + timedelta(days=90)),
        "pattern_aggregate_mean": flux.pattern_aggregate(
            "pattern_aggregates_daily", "duration_daily", "entity_id", "avg_duration_seconds",
            "mean", s, s + timedelta(days=7)),
        "pattern_aggregate_count": flux.pattern_aggregate(
            "pattern_aggregates_daily", "co_occurrence_daily", "device_pair",
            "co_occurrence_count", "count", s, s + timedelta(days=7)),
    }  # fmt: skip


def test_generated_flux_matches_golden_files():
    """The exact Flux text is a contract (reviewed as files; AGG_PIPELINE_RECORD=1 rewrites)."""
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name, text in _queries().items():
        path = GOLDEN / f"{name}.flux"
        if os.environ.get("AGG_PIPELINE_RECORD") == "1":
            path.write_text(text)
        assert path.exists(), f"missing golden file {path} (run with AGG_PIPELINE_RECORD=1)"
        assert text == path.read_text(), f"{name}: Flux changed; review and re-record"


def _fluxcheck(scripts: dict[str, str]) -> dict:
    if shutil.which("node") is None or not LSP.exists():
        pytest.skip("node or @influxdata/flux-lsp-browser missing (make test installs it)")
    out = subprocess.run(
        ["node", str(FLUXCHECK), str(LSP)], input=json.dumps(scripts), capture_output=True,
        text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def test_every_generated_query_passes_influxdatas_flux_checker():
    broken = {
        "type_error": 'from(bucket: "b") |> range(start: -1h) |> aggregateWindow(every: "1m", '
        "fn: mean)",
        "unknown_function": 'from(bucket: "b") |> range(start: -1h) |> nosuch()',
        "syntax_error": 'from(bucket: "b") |> range(start: -1h',
    }
    results = _fluxcheck({**_queries(), **broken})
    for name in _queries():
        assert results[name] == {"syntax_errors": [], "semantically_valid": True}, name
    # The checker can fail: each broken query is refused.
    for name in broken:
        assert not results[name]["semantically_valid"] or results[name]["syntax_errors"], name


def test_names_that_could_inject_flux_are_refused():
    with pytest.raises(ValueError, match="refusing"):
        flux.string('x") |> drop(')
    with pytest.raises(ValueError):
        flux.number(float("nan"))
    with pytest.raises(CatalogueError, match="source.bucket"):
        parse_catalogue(
            "name: x\nsample_interval_seconds: 1\nfields: {ph: {sensor_type: PH, unit: pH, "
            'min: 0, max: 14}}\nsource: {kind: influxdb, bucket: "a\\" or true", '
            "measurement: m}\n",
            "x.yaml",
        )


# ------------------------------------------------------------- reading annotated CSV
MULTI = (
    "#datatype,string,long,dateTime:RFC3339,double,string,string\r\n"
    "#group,false,false,false,false,true,true\r\n"
    "#default,mean,,,,,\r\n"
    ",result,table,_time,_value,_field,sensor_tag\r\n"
    ",,0,2026-11-22T00:00:00Z,6.5,ph,dev_a\r\n"
    ",,0,2026-11-22T00:01:00Z,6.25,ph,dev_a\r\n"
    ",,1,2026-11-22T00:00:00Z,1.5,ec,dev_a\r\n"
    "\r\n"
    "#datatype,string,long,dateTime:RFC3339,long,string,string\r\n"
    "#group,false,false,false,false,true,true\r\n"
    "#default,count,,,,,\r\n"
    ",result,table,_time,_value,_field,sensor_tag\r\n"
    ',,2,2026-11-22T00:00:00Z,2,ph,"dev,b"\r\n'
    "\r\n"
)


def _answer(fake: FakeInflux, body: str, status: int = 200, headers=None) -> None:
    fake.fail_next("/api/v2/query", Fault(status=status, body=body, headers=headers or {}))


def test_several_tables_and_results_are_read_with_their_types(influx):
    _answer(influx, MULTI, headers={"Content-Type": "text/csv"})
    frames = resource(influx).query_frames('from(bucket: "x")')
    assert set(frames) == {"mean", "count"}
    mean = frames["mean"]
    assert list(mean["_value"]) == [6.5, 6.25, 1.5]
    assert list(mean["_field"]) == ["ph", "ph", "ec"]
    assert isinstance(mean["_time"].dtype, pd.DatetimeTZDtype) and str(mean["_time"].dt.tz) == "UTC"
    assert mean["_time"].iloc[1] == pd.Timestamp("2026-11-22T00:01:00Z")
    count = frames["count"]
    assert count["_value"].tolist() == [2] and count["sensor_tag"].tolist() == ["dev,b"]


def test_an_empty_answer_is_no_frames_and_stages_nothing(influx, engine):
    _answer(influx, "\r\n")
    assert resource(influx).query_frames("x") == {}
    influx.buckets["hydroponics"] = {"name": "hydroponics"}  # exists, holds no points
    source = InfluxReadingsSource(INFLUX_HYDRO, resource(influx))
    ctx = writers.WriteContext(WarehouseResource(database_url=str(engine.url)), source,
                               INFLUX_HYDRO, Settings())  # fmt: skip
    window = Window(datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 2, 1, tzinfo=UTC))
    report = writers.write_readings_1m(ctx, window)
    assert report.rows_written == 0 and report.raw_rows_read == 0


def test_an_error_table_inside_a_200_raises_influxdbs_message(influx):
    _answer(
        influx,
        "#datatype,string,string\r\n#group,true,true\r\n#default,,\r\n,error,reference\r\n"
        ',"failed to execute query: bucket ""nope"" not found",897\r\n',
    )
    with pytest.raises(InfluxError, match='bucket "nope" not found'):
        resource(influx).query_frames("x")


def test_a_bad_token_is_a_clear_401(influx):
    bad = InfluxResource(url=influx.url, token="wrong", org=influx.org)
    with pytest.raises(InfluxError, match="HTTP 401: unauthorized access"):
        bad.query_frames("x")
    with pytest.raises(InfluxError, match="401"):
        bad.write_lines("b", ["m f=1 1"])


def test_a_missing_bucket_fails_the_write_with_influxdbs_message(influx):
    with pytest.raises(InfluxError, match='write to bucket .nope. failed after 1 attempt.*'
                       'bucket "nope" not found'):  # fmt: skip
        resource(influx).write_lines("nope", ["m f=1 1"])


def test_a_connection_reset_mid_response_is_an_error_not_a_short_answer(influx):
    influx.fail_next("/api/v2/query", Fault(reset=True))
    with pytest.raises(InfluxError, match="InfluxDB query failed"):
        resource(influx).query_frames("x")


def test_writes_retry_honouring_retry_after_then_succeed(influx, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr("agg_pipeline.influx.client.time.sleep", waits.append)
    influx.buckets["b"] = {"name": "b"}
    influx.fail_next("/api/v2/write", Fault(429, {"Retry-After": "7"}, '{"message": "slow"}'),
                     Fault(503, {}, '{"message": "busy"}'))  # fmt: skip
    assert resource(influx, backoff_base_s=2.0).write_lines("b", ["m f=1 1"]) == 1
    writes = [r for r in influx.requests if r.path == "/api/v2/write"]
    assert len(writes) == 3
    assert waits[0] == 7.0  # Retry-After honoured
    assert 2.0 * 2 * 0.8 <= waits[1] <= 2.0 * 2 * 1.2  # exponential backoff with jitter
    assert len(influx.points["b"]) == 1


def test_a_write_that_keeps_failing_raises_after_three_attempts(influx, monkeypatch):
    monkeypatch.setattr("agg_pipeline.influx.client.time.sleep", lambda s: None)
    influx.buckets["b"] = {"name": "b"}
    influx.fail_next("/api/v2/write", *[Fault(503, {"Retry-After": "1"},
                                              '{"message": "storage busy"}')] * 3)  # fmt: skip
    with pytest.raises(InfluxError, match="after 3 attempt.*HTTP 503: storage busy"):
        resource(influx).write_lines("b", ["m f=1 1"])
    assert "b" not in influx.points


# ------------------------------------------------------------------- what we write
SINK_CATALOGUE = parse_catalogue(
    HYDRO.model_dump_json(exclude={"influx_sink"})[:-1]
    + ',"influx_sink": {"bucket": "hydroponics_downsampled", "measurement": "sensor_readings",'
    ' "retention_days": 30, "patterns_bucket": "pattern_aggregates_daily"}}',
    "sink",
)


def test_windows_are_written_in_the_old_shape_exactly(influx, warehouse_url, engine):
    t0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    data.insert(engine, [
        (t0 + timedelta(seconds=10), "tank 1", "ph", 6.0),
        (t0 + timedelta(seconds=40), "tank 1", "ph", 7.0),
        (t0 + timedelta(seconds=20), "tank 1", "ec", 1.5),
        (t0 + timedelta(minutes=1, seconds=5), "tank,2", "ph", 5.5),
    ])  # fmt: skip
    warehouse = WarehouseResource(database_url=warehouse_url)
    s = Settings()
    ctx = writers.WriteContext(warehouse, readings_source(SINK_CATALOGUE, engine), SINK_CATALOGUE,
                               s)  # fmt: skip
    hour = Window(t0, t0 + timedelta(hours=1))
    writers.write_readings_1m(ctx, hour)
    fake = resource(influx)
    n = influx_sink.write_windows(engine, fake, SINK_CATALOGUE, "1m", hour)

    # Stamped at the window's end (window_time: stop, what aggregateWindow stamped).
    ts0, ts1 = int(t0.timestamp()) + 60, int(t0.timestamp()) + 120
    expected = [
        f"sensor_readings_1m,sensor_tag=tank\\ 1,stat_type=count ec=1i,ph=2i {ts0}",
        f"sensor_readings_1m,sensor_tag=tank\\ 1,stat_type=max ec=1.5,ph=7.0 {ts0}",
        f"sensor_readings_1m,sensor_tag=tank\\ 1,stat_type=mean ec=1.5,ph=6.5 {ts0}",
        f"sensor_readings_1m,sensor_tag=tank\\ 1,stat_type=min ec=1.5,ph=6.0 {ts0}",
        f"sensor_readings_1m,sensor_tag=tank\\,2,stat_type=count ph=1i {ts1}",
        f"sensor_readings_1m,sensor_tag=tank\\,2,stat_type=max ph=5.5 {ts1}",
        f"sensor_readings_1m,sensor_tag=tank\\,2,stat_type=mean ph=5.5 {ts1}",
        f"sensor_readings_1m,sensor_tag=tank\\,2,stat_type=min ph=5.5 {ts1}",
    ]
    writes = [r for r in influx.requests if r.path == "/api/v2/write"]
    assert len(writes) == 1 and n == len(expected)
    assert writes[0].body.decode().split("\n") == expected
    assert writes[0].args == {"org": "agg-org", "bucket": "hydroponics_downsampled",
                              "precision": "s"}  # fmt: skip
    assert writes[0].headers["Authorization"] == "Token test-token"
    assert writes[0].headers["Content-Encoding"] == "gzip"
    # The buckets were created with their retention rules.
    created = {b["name"]: b["retentionRules"] for b in influx.buckets.values()}
    assert created["hydroponics_downsampled"][0]["everySeconds"] == 30 * 86400
    assert created["pattern_aggregates_daily"][0]["everySeconds"] == 90 * 86400

    # Re-writing the window overwrites the same points: still 2 x 4 points x fields.
    before = len(influx.points["hydroponics_downsampled"])
    influx_sink.write_windows(engine, fake, SINK_CATALOGUE, "1m", hour)
    assert len(influx.points["hydroponics_downsampled"]) == before == 12


def test_pattern_aggregates_are_written_as_the_old_client_did():
    det = patterns.DETECTORS["time_based"]
    row = {"day": date(2026, 11, 2), "entity_id": "light.living_room", "domain": "light",
           "hourly_distribution": [0] * 23 + [3], "peak_hours": [23], "frequency": 0.5,
           "confidence": 0.75, "occurrences": 3}  # fmt: skip
    (line,) = influx_sink.pattern_lines(det, [row])
    assert line == (
        "time_based_daily,date=2026-11-02,domain=light,entity_id=light.living_room "
        'hourly_distribution="[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '
        '0, 0, 3]",peak_hours="[23]",frequency=0.5,confidence=0.75,occurrences=3i '
        f"{int(datetime(2026, 11, 2, tzinfo=UTC).timestamp())}"
    )


def test_old_tasks_are_listed_disabled_and_deleted(influx):
    keep = influx.add_task("my_alerting_task")
    ids = [influx.add_task(n) for n in ("aggregate_1m_mean", "aggregate_5m_max")]
    fake = resource(influx)
    assert [t["name"] for t in fake.list_tasks()] == ["aggregate_1m_mean", "aggregate_5m_max"]
    fake.set_task_status(ids[0], "inactive")
    assert influx.tasks[ids[0]]["status"] == "inactive"
    fake.delete_task(ids[1])
    assert set(influx.tasks) == {keep, ids[0]}


# ------------------------------------------------------------------------- end to end
KOLKATA = "Asia/Kolkata"  # +05:30: hours do not start on UTC hours


def _clean_raw(engine: sa.Engine) -> None:
    """What InfluxDB can hold: no NULL / NaN / inf, one point per (time, device, field)."""
    fields = list(HYDRO.fields)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "DELETE FROM raw.readings WHERE value IS NULL OR value = 'NaN'::float8 "
                "OR value IN ('Infinity'::float8, '-Infinity'::float8) "
                "OR NOT field = ANY (:f)"
            ),
            {"f": fields},
        )
        conn.execute(
            sa.text(
                "DELETE FROM raw.readings a USING raw.readings b WHERE a.ctid > b.ctid "
                "AND a.time = b.time AND a.device = b.device AND a.field = b.field"
            )
        )


BI_TABLES = {
    "bi.readings_1m": "window_start",
    "bi.readings_5m": "window_start",
    "bi.hourly_medians": "hour_start",
    "bi.hourly_sensor_agg": "hour_start",
    "bi.daily_sensor_agg": "metric_date",
    "bi.weekly_sensor_agg": "week_start",
    "bi.monthly_sensor_agg": "month_start",
    "bi.daily_sensor_conditions": "metric_date",
}


def _snapshot(engine: sa.Engine) -> dict[str, pd.DataFrame]:
    out = {}
    with engine.connect() as conn:
        for table, key in BI_TABLES.items():
            frame = pd.read_sql(
                sa.text(
                    f"SELECT dv.device_code, s.field, t.* FROM {table} AS t "
                    "JOIN iot.sensors AS s ON s.id = t.sensor_id "
                    "JOIN iot.devices AS dv ON dv.id = s.device_id"
                ),
                conn,
            )
            drop = [c for c in frame.columns if c in ("sensor_id", "id", "computed_at",
                                                     "updated_at", "created_at")]  # fmt: skip
            out[table] = (
                frame.drop(columns=drop)
                .sort_values(["device_code", "field", key])
                .reset_index(drop=True)
            )
    return out


def _run_all(ctx: writers.WriteContext, zone: ZoneInfo) -> None:
    days = Window(
        day_window(date(2026, 11, 2), zone).start, day_window(date(2026, 11, 4), zone).end
    )
    writers.write_readings_1m(ctx, days)
    writers.write_merged_level(ctx, writers.LEVEL_5M, days)
    writers.write_merged_level(ctx, writers.LEVEL_HOURLY, days)
    writers.write_daily(ctx, days)
    week = Window(
        day_window(date(2026, 11, 2), zone).start, day_window(date(2026, 11, 8), zone).end
    )
    writers.write_merged_level(ctx, writers.LEVEL_WEEKLY, week)
    november = Window(
        day_window(date(2026, 11, 1), zone).start, day_window(date(2026, 11, 30), zone).end
    )
    writers.write_merged_level(ctx, writers.LEVEL_MONTHLY, november)  # month medians too


def test_bi_tables_from_influxdb_equal_those_from_postgresql(influx, warehouse_url, engine):
    data.seed(engine, devices=3, hz=0.01, days=2)
    _clean_raw(engine)
    settings = Settings(timezone=KOLKATA)
    warehouse = WarehouseResource(database_url=warehouse_url)
    pg = writers.WriteContext(warehouse, readings_source(HYDRO, engine), HYDRO, settings)
    _run_all(pg, settings.zone)
    from_postgres = _snapshot(engine)

    with engine.connect() as conn:
        raw = pd.read_sql(sa.text("SELECT time, device, field, value FROM raw.readings"), conn)
    influx.add_points("hydroponics", readings_to_points(raw, "sensor_readings", "sensor_tag"))
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE " + ", ".join(BI_TABLES) + ", raw.readings"))
    source = InfluxReadingsSource(INFLUX_HYDRO, resource(influx))
    _run_all(writers.WriteContext(warehouse, source, INFLUX_HYDRO, settings), settings.zone)
    from_influx = _snapshot(engine)

    queries = [r for r in influx.requests if r.path == "/api/v2/query"]
    assert queries, "the InfluxDB source sent no queries"
    for table, expected in from_postgres.items():
        got = from_influx[table]
        assert len(expected) > 0, table
        pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-9, atol=1e-9,
                                      check_dtype=False, obj=table)  # fmt: skip


def test_late_points_in_influxdb_are_observed_per_hour(influx, engine):
    from agg_pipeline.warehouse import late_data

    start = datetime(2026, 11, 2, tzinfo=UTC)
    src = INFLUX_HYDRO.source

    def observe(now: datetime) -> int:
        frames = resource(influx).query_frames(
            flux.hourly_fingerprints(src.bucket, src.measurement, start, now, timedelta(0))
        )
        return late_data.record_fingerprints(
            engine, late_data.influx_fingerprints(frames), start, now, timedelta(minutes=10)
        )

    def points(at: datetime, n: int) -> pd.DataFrame:
        return pd.DataFrame({
            "_time": [pd.Timestamp(at) + pd.Timedelta(seconds=i) for i in range(n)],
            "_measurement": "sensor_readings", "sensor_tag": "dev_a", "_field": "ph",
            "_value": 6.0,
        })  # fmt: skip

    influx.add_points("hydroponics", points(start + timedelta(hours=1), 30))
    assert observe(start + timedelta(hours=1, minutes=30)) == 0  # first sight, hour open
    assert observe(start + timedelta(hours=3)) == 0  # settled, unchanged
    influx.add_points("hydroponics", points(start + timedelta(hours=1, minutes=40), 5))
    influx.add_points("hydroponics", points(start + timedelta(hours=2, minutes=5), 2))
    # Hour 1 settled at 02:10: its 5 new points are late; hour 2 settles at 03:10 only.
    assert observe(start + timedelta(hours=3, minutes=1)) == 1
    influx.add_points("hydroponics", points(start + timedelta(hours=2, minutes=30), 3))
    influx.add_points("hydroponics", points(start + timedelta(hours=4, minutes=2), 4))
    # 05:20: hour 2 got 3 more points after settling; hour 4 was first seen after settling,
    # while observation was running: late too.
    assert observe(start + timedelta(hours=5, minutes=20)) == 2
    late = {h.hour_start: h.late_rows for h in late_data.changes_since(engine, 0, start)}
    assert late == {
        start + timedelta(hours=1): 5,
        start + timedelta(hours=2): 3,
        start + timedelta(hours=4): 4,
    }
    assert len([r for r in influx.requests if r.path == "/api/v2/query"]) == 4


# ------------------------------------------------------------------------ live InfluxDB
LIVE = all(os.environ.get(k) for k in ("INFLUXDB_URL", "INFLUXDB_TOKEN", "INFLUXDB_ORG"))


@pytest.mark.skipif(not LIVE, reason="live InfluxDB tests: set INFLUXDB_URL, INFLUXDB_TOKEN, "
                    "INFLUXDB_ORG to run them against a real InfluxDB 2.x")  # fmt: skip
def test_live_influxdb_answers_like_pandas(engine):
    """Write known points to a temporary bucket, run the source's queries, compare with
    statistics computed here by hand; then delete the bucket."""
    import uuid

    live = InfluxResource(url=os.environ["INFLUXDB_URL"], token=os.environ["INFLUXDB_TOKEN"],
                          org=os.environ["INFLUXDB_ORG"])  # fmt: skip
    bucket = f"agg_pipeline_test_{uuid.uuid4().hex[:8]}"
    live.ensure_bucket(bucket, 1)
    try:
        t0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
        values = [6.0, 7.0, 6.5, 20.0]  # 20 is out of bounds for pH
        lines = [f"sensor_readings,sensor_tag=dev_a ph={v} {int(t0.timestamp()) + 10 * i}"
                 for i, v in enumerate(values)]  # fmt: skip
        live.write_lines(bucket, lines)
        frames = live.query_frames(flux.partials_1m(
            bucket, "sensor_readings", {"ph": (0.0, 14.0)}, t0, t0 + timedelta(hours=1),
            timedelta(0)))  # fmt: skip
        assert frames["count"]["_value"].tolist() == [3]
        assert frames["mean"]["_value"].tolist() == pytest.approx([6.5])
        assert frames["hour_median"]["_value"].tolist() == pytest.approx([6.5])
        assert frames["rows"]["_value"].tolist() == [4]
        # The day-level summary: count, exact median, condition classes and held time.
        # Band: optimal 5.5-6.5, critical below 5.0 / above 7.0. 6.0 holds 10 s (to the
        # next point), 7.0 (acceptable) 10 s, 6.5 the max gap (300 s) before the end.
        summary = live.query_frames(flux.period_summary(
            bucket, "sensor_readings", "sensor_tag", {"ph": (0.0, 14.0)},
            {"ph": (5.5, 6.5, 5.0, 7.0)}, t0, t0 + timedelta(hours=1),
            t0 + timedelta(hours=2), 300.0))  # fmt: skip
        assert summary["count"]["_value"].tolist() == [3]
        assert summary["median"]["_value"].tolist() == pytest.approx([6.5])
        classes = summary["classes"].set_index("class")
        assert classes.loc["optimal", "n"] == 2 and classes.loc["acceptable", "n"] == 1
        assert classes.loc["optimal", "held"] == pytest.approx(310.0)
        assert classes.loc["acceptable", "held"] == pytest.approx(10.0)
        # The sink's shape reads back with a plain Flux query, as Grafana panels do.
        live.write_lines(bucket, [f"sensor_readings_1m,sensor_tag=dev_a,stat_type=mean "
                                  f"ph=6.5 {int(t0.timestamp())}"])  # fmt: skip
        back = live.query_frames(
            f'from(bucket: "{bucket}") |> range(start: {flux.time(t0)}, '
            f"stop: {flux.time(t0 + timedelta(minutes=1))}) "
            '|> filter(fn: (r) => r._measurement == "sensor_readings_1m" and '
            'r.stat_type == "mean")'
        )
        assert back["_result"]["_value"].tolist() == [6.5]
        if os.environ.get("AGG_PIPELINE_RECORD") == "1":
            (GOLDEN / "live_partials_1m.json").write_text(
                json.dumps({k: v.astype(str).to_dict("records") for k, v in frames.items()})
            )
    finally:
        live.delete_bucket(bucket)


# ------------------------------------------------------------- Dagster and the CLI
CATALOGUE_YAML = """
name: hydro_influx
sample_interval_seconds: 10
source: {kind: influxdb, bucket: hydroponics, measurement: sensor_readings,
         device_tag: sensor_tag}
influx_sink: {bucket: hydroponics_downsampled, measurement: sensor_readings,
              retention_days: 30}
fields:
  ph: {sensor_type: PH_SENSOR, unit: pH, min: 0, max: 14, optimal: {min: 5.5, max: 6.5}}
  ec: {sensor_type: EC_SENSOR, unit: mS/cm, min: 0, max: 10}
"""


def test_a_dagster_run_reads_from_and_writes_to_influxdb(influx, warehouse_url, tmp_path):
    import numpy as np

    from agg_pipeline_tests.e2e.test_cli import BIN, run

    hour = pd.Timestamp("2026-11-02T10:00:00Z")
    rng = np.random.default_rng(3)
    raw = pd.DataFrame({
        "time": [hour + pd.Timedelta(seconds=10 * i) for i in range(360)] * 4,
        "device": ["dev_a"] * 720 + ["dev_b"] * 720,
        "field": (["ph"] * 360 + ["ec"] * 360) * 2,
        "value": rng.uniform(5.0, 7.0, 1440),
    })  # fmt: skip
    raw.loc[5, "value"] = 99.0  # out of bounds for pH: excluded and counted
    influx.add_points("hydroponics", readings_to_points(raw, "sensor_readings", "sensor_tag"))
    influx.add_task("aggregate_1m_mean")
    influx.add_task("aggregate_5m_max")
    (tmp_path / "catalogue.yaml").write_text(CATALOGUE_YAML)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    env = {
        **os.environ,
        "DATABASE_URL": warehouse_url,
        "DAGSTER_HOME": str(home),
        "AGG_PIPELINE_CATALOGUE": str(tmp_path / "catalogue.yaml"),
        "INFLUXDB_URL": influx.url,
        "INFLUXDB_TOKEN": influx.token,
        "INFLUXDB_ORG": influx.org,
    }
    out = run(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "agg_pipeline.definitions",
            "--select",
            "readings_1m,readings_5m",
            "--partition",
            "2026-11-02-10:00",
        ],
        env,
    )
    assert influx.token not in out.stdout + out.stderr  # the token is never logged

    valid = raw[(raw["value"] >= 0) & ~((raw["field"] == "ph") & (raw["value"] > 14))]
    for level, freq in (("1m", "1min"), ("5m", "5min")):
        expected = (
            valid.assign(w=valid["time"].dt.floor(freq))
            .groupby(["device", "field", "w"])["value"]
            .agg(["count", "mean"])
        )
        # In PostgreSQL ...
        engine = sa.create_engine(warehouse_url)
        with engine.connect() as conn:
            got = pd.read_sql(sa.text(
                f"SELECT dv.device_code AS device, s.field, t.window_start AS w, "
                f"t.sample_count AS count, t.mean_value AS mean FROM bi.readings_{level} t "
                "JOIN iot.sensors s ON s.id = t.sensor_id JOIN iot.devices dv "
                "ON dv.id = s.device_id"), conn).set_index(["device", "field", "w"])  # fmt: skip
        engine.dispose()
        got.index = got.index.set_levels(pd.to_datetime(got.index.levels[2], utc=True), level=2)
        pd.testing.assert_frame_equal(got.sort_index(), expected.sort_index(), check_dtype=False,
                                      check_names=False)  # fmt: skip
        # ... and in InfluxDB, in the old tasks' shape.
        sunk = influx.points["hydroponics_downsampled"]
        sunk = sunk[sunk["_measurement"] == f"sensor_readings_{level}"]
        means = sunk[sunk["stat_type"] == "mean"].set_index(["sensor_tag", "_field", "_time"])
        assert len(means) == len(expected)
        assert np.allclose(means["_value"].astype(float).sort_index().to_numpy(),
                           expected["mean"].sort_index().to_numpy(), rtol=1e-12)  # fmt: skip

    cli = str(BIN / "agg-pipeline")
    assert "hydroponics_downsampled: exists" in run([cli, "influx", "ensure-buckets"], env).stdout
    listed = run([cli, "influx", "tasks", "list"], env).stdout
    assert "aggregate_1m_mean" in listed and "aggregate_5m_max" in listed
    run([cli, "influx", "tasks", "disable", "--yes"], env)
    assert {t["status"] for t in influx.tasks.values()} == {"inactive"}
    run([cli, "influx", "tasks", "delete", "--yes"], env)
    assert influx.tasks == {}
