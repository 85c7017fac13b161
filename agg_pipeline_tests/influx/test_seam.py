"""Switching from the old InfluxDB systems without a seam (issue 17).

Through the real ``influxdb-client`` against the local protocol server
(``influx_server.FakeInflux``): the old tasks' timestamps continue, tags are carried, the
pattern aggregates read back from InfluxDB equal the PostgreSQL read, the buckets'
retention is corrected, and status reports InfluxDB's health. Every expectation is
computed here from the raw points with pandas, not by the code under test.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from agg_pipeline import cli
from agg_pipeline import status as status_mod
from agg_pipeline.config.catalogue import (
    CatalogueError,
    get_catalogue,
    load_catalogue,
    parse_catalogue,
)
from agg_pipeline.config.settings import Settings, get_settings
from agg_pipeline.core.windows import Window
from agg_pipeline.definitions import defs
from agg_pipeline.influx import flux, series
from agg_pipeline.influx import sink as influx_sink
from agg_pipeline.influx.client import InfluxError, InfluxResource
from agg_pipeline.serving import patterns, patterns_influx
from agg_pipeline.sources.influx import InfluxReadingsSource
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline.warehouse.writes import readings as writers
from agg_pipeline_tests.influx_server import FakeInflux

WQ = load_catalogue("water_quality_influx")
T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
def influx(httpserver) -> Iterator[FakeInflux]:
    # pytest-httpserver's server (and URL) lives for the session, its buckets per test:
    # forget which buckets the sink ensured there, before and after (for other files).
    influx_sink._ENSURED.clear()
    yield FakeInflux(httpserver)
    influx_sink._ENSURED.clear()


def resource(fake: FakeInflux) -> InfluxResource:
    return InfluxResource(url=fake.url, token=fake.token, org=fake.org)


def _with(catalogue, **changes):
    """``catalogue`` with top-level sections replaced (validated again)."""
    data = json.loads(catalogue.model_dump_json())
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return parse_catalogue(json.dumps(data), "test")


def _raw(minutes: int, tags: dict[str, list[str]] | None = None, seed: int = 1) -> pd.DataFrame:
    """Water-quality points every 10 s for ``minutes`` from T0, two probes (one per tag
    combination when ``tags``), temperature and conductivity."""
    rng = np.random.default_rng(seed)
    combos = [{}]
    for tag, values in (tags or {}).items():
        combos = [{**c, tag: v} for c in combos for v in values]
    frames = []
    for probe in ("probe_1", "probe_2"):
        for combo in combos:
            for fld, lo, hi in (("temperature", 10, 25), ("conductivity", 100, 1400)):
                times = [
                    pd.Timestamp(T0) + pd.Timedelta(seconds=10 * i) for i in range(6 * minutes)
                ]
                frames.append(pd.DataFrame({
                    "_time": times, "_measurement": "water_quality", "sensor_tag": probe,
                    **combo, "_field": fld, "_value": rng.uniform(lo, hi, len(times)),
                }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def _context(catalogue, fake: FakeInflux, warehouse_url: str) -> writers.WriteContext:
    return writers.WriteContext(
        WarehouseResource(database_url=warehouse_url),
        InfluxReadingsSource(catalogue, resource(fake)),
        catalogue,
        Settings(),
    )


def _read_back(fake: FakeInflux, measurement: str, start: datetime, stop: datetime):
    """The window points as a dashboard reads them: a Flux query through the client."""
    frames = resource(fake).query_frames(flux.sink_windows("water-quality", measurement, start,
                                                           stop))  # fmt: skip
    return frames["windows"]


# ------------------------------------------------------------------------ 1. timestamps
def _old_task_points(raw: pd.DataFrame, until: datetime, every: str = "1min") -> pd.DataFrame:
    """What ``aggregateWindow(every: 1m, fn: mean)`` (or 5m) + set(stat_type) wrote: per
    series and window before ``until``, the mean, stamped at the window's _stop (its end)."""
    old = raw[raw["_time"] < pd.Timestamp(until)].copy()
    old["_time"] = old["_time"].dt.floor(every) + pd.Timedelta(every)
    keys = ["_time", "sensor_tag", "_field"]
    out = old.groupby(keys, as_index=False)["_value"].mean()
    level = {"1min": "1m", "5min": "5m"}[every]
    return out.assign(_measurement=f"water_quality_{level}", stat_type="mean")


@pytest.mark.parametrize("window_time", ["stop", "start"])
def test_old_task_points_and_new_points_line_up(
    influx, warehouse_url, engine, window_time, monkeypatch, tmp_path, capsys
):
    """The shipped catalogue continues the old tasks' series: minutes 0-4 written by the old
    1m mean task, minutes 5-9 by the sink, read back through the client as one series per
    probe and field, one point a minute, each the mean of the minute *before* its stamp.
    With ``window_time: start`` the seam shows (the negative control): the first new point
    lands on the last old point's time."""
    catalogue = _with(WQ, influx_sink={"window_time": window_time})
    assert WQ.influx_sink.window_time == "stop"  # the shipped default
    raw = _raw(minutes=10)
    switch = T0 + timedelta(minutes=5)
    influx.add_points("water-quality", raw)
    influx.add_points("water-quality", _old_task_points(raw, switch))
    influx.add_points("water-quality", _old_task_points(raw, switch, "5min"))

    ctx = _context(catalogue, influx, warehouse_url)
    hour, after = Window(T0, T0 + timedelta(hours=1)), Window(switch, T0 + timedelta(hours=1))
    writers.write_readings_1m(ctx, hour)
    writers.write_merged_level(ctx, writers.LEVEL_5M, hour)
    for level in ("1m", "5m"):
        influx_sink.write_windows(engine, resource(influx), catalogue, level, after)

    back = _read_back(influx, "water_quality_1m", T0, T0 + timedelta(hours=1))
    means = back[back["stat_type"] == "mean"]
    expected = (
        raw.assign(_time=raw["_time"].dt.floor("1min") + pd.Timedelta(minutes=1))
        .groupby(["sensor_tag", "_field", "_time"])["_value"]
        .mean()
    )
    got = means.set_index(["sensor_tag", "_field", "_time"])["_value"].astype(float)
    if window_time == "start":
        # The new 10:05 point (window 10:05-10:06) overwrote the old 10:05 point (window
        # 10:04-10:05), and 10:10 is missing: shifted by one window.
        assert not got.index.equals(expected.sort_index().index) or not np.allclose(
            got.sort_index().to_numpy(), expected.sort_index().to_numpy()
        )
        return
    assert not got.index.duplicated().any()
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False,
                                   rtol=1e-12)  # fmt: skip
    for _, times in means.groupby(["sensor_tag", "_field"])["_time"]:
        steps = times.sort_values().diff().dropna().unique()
        assert list(steps) == [pd.Timedelta(minutes=1)] and len(times) == 10
    # The 5-minute series likewise: the old task's 10:05 point, then the sink's 10:10.
    back5 = _read_back(influx, "water_quality_5m", T0, T0 + timedelta(hours=1))
    means5 = back5[back5["stat_type"] == "mean"]
    got5 = means5.set_index(["sensor_tag", "_field", "_time"])["_value"].astype(float)
    expected5 = (
        raw.assign(_time=raw["_time"].dt.floor("5min") + pd.Timedelta(minutes=5))
        .groupby(["sensor_tag", "_field", "_time"])["_value"]
        .mean()
    )
    pd.testing.assert_series_equal(got5.sort_index(), expected5.sort_index(),
                                   check_names=False, rtol=1e-12)  # fmt: skip
    assert sorted(set(means5["_time"])) == [pd.Timestamp(T0) + pd.Timedelta(minutes=m)
                                            for m in (5, 10)]  # fmt: skip
    # The new points carry count too (the old tasks wrote mean, min and max only).
    new = back[(back["stat_type"] == "count") & (back["_time"] > pd.Timestamp(switch))]
    assert set(new["_value"].astype(int)) == {6}

    # `influx compare` agrees: every old and new mean point equals PostgreSQL's window.
    compared = influx_sink.compare_windows(
        engine, resource(influx), catalogue, "1m", Window(T0, T0 + timedelta(hours=1))
    )
    assert compared.ok and compared.differing == 0 and compared.only_influx == 0
    # old: 5 minutes x 2 probes x 2 fields, mean only; new: 5 minutes x 4 stats.
    assert compared.same == 5 * 2 * 2 + 5 * 2 * 2 * 4
    assert compared.only_postgres == 5 * 2 * 2 * 3  # the old minutes' min, max, count
    _use_catalogue(monkeypatch, influx, tmp_path, catalogue)
    argv = ["influx", "compare", "--start", "2026-11-02T10:00", "--end", "2026-11-02T11:00"]
    assert cli.main([*argv, "--level", "1m"]) == 0
    assert (
        "1m: 100 points equal PostgreSQL, 0 differ, 0 in InfluxDB only" in capsys.readouterr().out
    )


def test_compare_finds_a_shifted_old_point(influx, warehouse_url, engine, monkeypatch, tmp_path):
    raw = _raw(minutes=3)
    influx.add_points("water-quality", raw)
    shifted = _old_task_points(raw, T0 + timedelta(minutes=3))
    shifted["_time"] -= pd.Timedelta(minutes=1)  # stamped at _start, as `start` would
    influx.add_points("water-quality", shifted)
    writers.write_readings_1m(
        _context(WQ, influx, warehouse_url), Window(T0, T0 + timedelta(hours=1))
    )
    c = influx_sink.compare_windows(
        engine, resource(influx), WQ, "1m", Window(T0, T0 + timedelta(hours=1))
    )
    # 10:00 has no window ending then (only_influx); 10:01, 10:02 hold the wrong minute.
    assert not c.ok and c.only_influx == 4 and c.differing == 8 and c.same == 0
    _use_catalogue(monkeypatch, influx, tmp_path, WQ)
    assert cli.main(["influx", "compare", "--start", "2026-11-02T10:00", "--end",
                     "2026-11-02T11:00", "--level", "1m"]) == 1  # fmt: skip


# ------------------------------------------------------------------------------ 2. tags
def test_tags_split_a_probe_and_are_carried_through_the_sink(influx, warehouse_url, engine):
    """`site` splits each probe's fields into two series: with `source.tags: [site]` each
    tag set is aggregated on its own (its own device) and the sink writes `site` back;
    without it the run stops, naming the tag and the setting."""
    raw = _raw(minutes=3, tags={"site": ["north", "south bank"]})
    raw["kind"] = "probe"  # a tag that does not split: neither named nor needed
    influx.add_points("water-quality", raw)
    hour = Window(T0, T0 + timedelta(hours=1))

    with pytest.raises(InfluxError, match=r"tags \['site'\] split them.*source\.tags"):
        writers.write_readings_1m(_context(WQ, influx, warehouse_url), hour)

    tagged = _with(WQ, source={"tags": ["site"]})
    ctx = _context(tagged, influx, warehouse_url)
    writers.write_readings_1m(ctx, hour)
    day = Window(datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC))
    writers.write_merged_level(ctx, writers.LEVEL_5M, day)
    writers.write_merged_level(ctx, writers.LEVEL_HOURLY, day)  # the daily merges hours
    writers.write_daily(ctx, day)
    influx_sink.write_windows(engine, resource(influx), tagged, "1m", hour)

    keys = ["sensor_tag", "site", "_field"]
    with engine.connect() as conn:
        minutes = pd.read_sql(sa.text(
            "SELECT dv.device_code, s.field, t.window_start, t.sample_count, t.mean_value "
            "FROM bi.readings_1m t JOIN iot.sensors s ON s.id = t.sensor_id "
            "JOIN iot.devices dv ON dv.id = s.device_id"), conn)  # fmt: skip
        daily = pd.read_sql(sa.text(
            "SELECT dv.device_code, s.field, t.sample_count, t.median_value "
            "FROM bi.daily_sensor_agg t JOIN iot.sensors s ON s.id = t.sensor_id "
            "JOIN iot.devices dv ON dv.id = s.device_id"), conn)  # fmt: skip
        conditions = pd.read_sql(sa.text(
            "SELECT dv.device_code, s.field, t.time_in_optimal_pct FROM "
            "bi.daily_sensor_conditions t JOIN iot.sensors s ON s.id = t.sensor_id "
            "JOIN iot.devices dv ON dv.id = s.device_id"), conn)  # fmt: skip
    codes = {series.compose(p, {"site": s}) for p in ("probe_1", "probe_2")
             for s in ("north", "south bank")}  # fmt: skip
    assert set(minutes["device_code"]) == codes == set(daily["device_code"])
    assert "probe_1,site=south\\ bank" in codes

    # Each tag set's minutes and day, against pandas over its own points.
    ref = raw.assign(w=raw["_time"].dt.floor("1min"))
    per_min = ref.groupby([*keys, "w"])["_value"].agg(["count", "mean"]).sort_index()
    minutes[["sensor_tag", "site"]] = [
        (d, t["site"]) for d, t in (series.split(c) for c in minutes["device_code"])
    ]
    got = minutes.assign(w=pd.to_datetime(minutes["window_start"], utc=True)).rename(
        columns={"field": "_field", "sample_count": "count", "mean_value": "mean"}
    ).set_index([*keys, "w"])[["count", "mean"]].sort_index()  # fmt: skip
    pd.testing.assert_frame_equal(got, per_min, check_dtype=False, check_names=False)
    per_day = ref.groupby(keys)["_value"].median()
    daily[["sensor_tag", "site"]] = [
        (d, t["site"]) for d, t in (series.split(c) for c in daily["device_code"])
    ]
    got_day = daily.rename(columns={"field": "_field"}).set_index(keys)["median_value"]
    pd.testing.assert_series_equal(got_day.sort_index(), per_day.sort_index(),
                                   check_names=False)  # fmt: skip
    assert len(conditions) == len(codes) * 2  # conditions per tag set too

    # The sink carries `site`: a query filtering on it still works, per tag set.
    back = _read_back(influx, "water_quality_1m", T0, T0 + timedelta(hours=1))
    means = back[back["stat_type"] == "mean"].copy()
    means["w"] = means["_time"] - pd.Timedelta(minutes=1)
    sunk = means.set_index([*keys, "w"])["_value"].astype(float).sort_index()
    pd.testing.assert_series_equal(sunk, per_min["mean"], check_names=False, rtol=1e-12)


def test_carried_tags_are_validated_names():
    base = WQ.model_dump(mode="json")
    for bad, match in ((["_start"], "cannot be a carried tag"),
                       (["sensor_tag"], "cannot be a carried tag"),
                       (["stat_type"], "cannot be a carried tag"),
                       (["site", "site"], "each tag once"),
                       (['site") |> drop('], "source.tags")):  # fmt: skip
        data = {**base, "source": {**base["source"], "tags": bad}}
        with pytest.raises(CatalogueError, match=match):
            parse_catalogue(json.dumps(data), "x.yaml")


def test_device_codes_spell_tag_sets_and_read_back():
    for device, tags in (("probe_1", {}), ("tank,2", {"site": "a=b c"}), ("x\\", {"s": "1"})):
        assert series.split(series.compose(device, tags)) == (device, tags)
    assert series.compose("p", {"b": "2", "a": "1", "c": ""}) == "p,a=1,b=2"


# ------------------------------------------------------------- 3. pattern aggregates
DAYS = [date(2026, 11, 2) + timedelta(days=i) for i in range(3)]


def _pattern_stores(fake: FakeInflux, engine: sa.Engine) -> patterns_influx.InfluxPatterns:
    """The same aggregates (20 of each type a day, three days) in PostgreSQL and, through
    the sink's line protocol, in the InfluxDB bucket."""
    rows = [a for d in DAYS for a in patterns.sample_aggregates(120, day=d)]
    for i, a in enumerate(rows):  # values that differ by day and key, for the aggregates
        for name in ("occurrences", "co_occurrence_count", "sessions"):
            if hasattr(a, name):
                setattr(a, name, (i * 7) % 13)
        if isinstance(a, patterns.SequenceDaily):
            a.frequency = (i * 5) % 11
        if hasattr(a, "confidence"):
            a.confidence = ((i * 3) % 10) / 10
    patterns.write_batch(engine, rows)
    # The sink's entry point, as the pattern assets call it (it creates the bucket).
    catalogue = _with(WQ, influx_sink={"patterns_bucket": "pattern_aggregates_daily"})
    for det in patterns.DETECTORS.values():
        mine = [a.model_dump() for a in rows if isinstance(a, det.model)]
        assert influx_sink.write_patterns(resource(fake), catalogue, det, mine) == len(mine)
    assert fake.buckets["pattern_aggregates_daily"]["retentionRules"][0]["everySeconds"] == (
        90 * 86400
    )
    return patterns_influx.InfluxPatterns(resource(fake), "pattern_aggregates_daily")


FILTERS = {
    "time_based": [{}, {"entity_id": "light.room_6"}],
    "co_occurrence": [{"entity_id": "switch.x7"}, {"device_pair": "light.room_1+switch.x1"}],
    "sequence": [{}, {"entity_id": "switch.coffee"}, {"entity_id": "light.room_8"}],
    "room_based": [{"area_id": "area_3"}, {"entity_id": "light.room_9"}],
    "duration": [{}, {"entity_id": "light.room_4"}],
    "anomaly": [{}, {"entity_id": "light.room_5"}],
}


def test_pattern_reads_from_influxdb_equal_the_postgresql_reads(influx, engine):
    store = _pattern_stores(influx, engine)
    for name, filters in FILTERS.items():
        for kw in filters:
            for start, end in ((DAYS[0], DAYS[2]), (DAYS[1], None)):
                pg = patterns.query(engine, name, start, end, **kw)
                ix = patterns.query(store, name, start, end, **kw)
                assert ix.problems == pg.problems == []
                assert ix.rows == pg.rows and pg.rows, (name, kw, start, end)
        det = patterns.DETECTORS[name]
        for i, metric in enumerate(det.numeric_fields):
            for how in ("sum", "mean", "count") if i == 0 else ("sum", "mean"):
                pg_agg = patterns.aggregate(engine, name, metric, DAYS[0], DAYS[2], how)
                ix_agg = patterns.aggregate(store, name, metric, DAYS[0], DAYS[2], how)
                assert ix_agg.keys() == pg_agg.keys() and pg_agg
                assert ix_agg == pytest.approx(pg_agg, rel=1e-12), (name, metric, how)
    # The aggregates were computed by InfluxDB (one row per key came back).
    asked = [json.loads(r.body)["query"] for r in influx.requests if r.path == "/api/v2/query"]
    assert sum('"kind": "pattern_aggregate"' in q for q in asked) > 0


def test_a_bad_stored_point_is_a_problem_and_bad_parameters_send_nothing(influx, engine):
    store = _pattern_stores(influx, engine)
    midnight = int(datetime(2026, 11, 3, tzinfo=UTC).timestamp())
    resource(influx).write_lines("pattern_aggregates_daily", [
        "sequence_daily,date=2026-11-03,sequence_id=broken sequence=\"[not json\",frequency=1i,"
        f"avg_duration_seconds=1.0,confidence=0.5 {midnight}",
        f"sequence_daily,date=2026-11-03,sequence_id=lonely frequency=2i {midnight}",
    ])  # fmt: skip
    result = patterns.query(store, "sequence", DAYS[1])
    assert len(result.rows) == 20
    assert len(result.problems) == 2
    assert result.problems[0].startswith("pattern_aggregates_daily/sequence_daily 2026-11-03 ")
    assert any("broken" in p and "Expecting value" in p for p in result.problems)
    assert any("lonely" in p for p in result.problems)

    sent = len(influx.requests)
    for call, match in (
        (lambda: patterns.query(store, "nope", DAYS[0]), "unknown detector type"),
        (lambda: patterns.query(store, "sequence", "2026-11-02"), "start"),
        (lambda: patterns.query(store, "sequence", DAYS[0], area_id="a"), "area_id"),
        (lambda: patterns.query(store, "anomaly", DAYS[0], entity_id="a\tb"), "entity_id"),
        (lambda: patterns.query(store, "sequence", DAYS[0], DAYS[0] + timedelta(400)), "366"),
        (lambda: patterns.aggregate(store, "sequence", "nope", DAYS[0], DAYS[1]), "metric"),
        (lambda: patterns.aggregate(store, "sequence", "frequency", DAYS[0], DAYS[1], "max"),
         "how"),
    ):  # fmt: skip
        with pytest.raises(patterns.PatternQueryError, match=match):
            call()
    assert len(influx.requests) == sent  # refused before any request


def test_the_catalogue_chooses_the_pattern_reader(influx, engine):
    sink = {"bucket": "water-quality", "measurement": "water_quality",
            "patterns_bucket": "pattern_aggregates_daily"}  # fmt: skip
    pg = _with(WQ, influx_sink=sink)
    ix = _with(WQ, influx_sink={**sink, "patterns_read": "influxdb"})
    assert patterns_influx.reader_for(pg, engine, resource(influx)) is engine
    reader = patterns_influx.reader_for(ix, engine, resource(influx))
    assert isinstance(reader, patterns_influx.InfluxPatterns)
    assert reader.bucket == "pattern_aggregates_daily"
    with pytest.raises(InfluxError, match="INFLUXDB_URL"):
        patterns_influx.reader_for(ix, engine, InfluxResource())
    with pytest.raises(CatalogueError, match="patterns_read: influxdb needs patterns_bucket"):
        _with(WQ, influx_sink={"patterns_read": "influxdb"})


# -------------------------------------------------------------------- 4. retention
def test_a_bucket_whose_retention_differs_is_reported_then_corrected(
    influx, monkeypatch, capsys, tmp_path
):
    influx.buckets["pattern_aggregates_daily"] = {
        "id": "0000000000000009", "name": "pattern_aggregates_daily", "orgID": "1",
        "retentionRules": [{"type": "expire", "everySeconds": 30 * 86400}],
    }  # fmt: skip
    influx.buckets["water-quality"] = {  # the raw bucket: no retention_days, not managed
        "id": "0000000000000008", "name": "water-quality", "orgID": "1",
        "retentionRules": [{"type": "expire", "everySeconds": 7 * 86400}],
    }  # fmt: skip
    sink = _with(WQ, influx_sink={"patterns_bucket": "pattern_aggregates_daily"}).influx_sink
    out = influx_sink.ensure_buckets(resource(influx), sink, cached=False)
    assert out == {
        "water-quality": "exists",
        "pattern_aggregates_daily": "retention differs: 30 d -> 90 d (run with --apply to "
        "correct it)",
    }
    assert influx.buckets["pattern_aggregates_daily"]["retentionRules"][0]["everySeconds"] == (
        30 * 86400
    )

    # The command line: reports (exit 1), then --apply corrects (exit 0), then all is well.
    _use_catalogue(monkeypatch, influx, tmp_path, _with(WQ, influx_sink=sink.model_dump()))
    assert cli.main(["influx", "ensure-buckets"]) == 1
    assert "retention differs: 30 d -> 90 d" in capsys.readouterr().out
    assert cli.main(["influx", "ensure-buckets", "--apply"]) == 0
    assert "pattern_aggregates_daily: retention corrected: 30 d -> 90 d" in capsys.readouterr().out
    rules = influx.buckets["pattern_aggregates_daily"]["retentionRules"]
    assert [(r["type"], r["everySeconds"]) for r in rules] == [("expire", 90 * 86400)]
    assert influx.buckets["water-quality"]["retentionRules"][0]["everySeconds"] == 7 * 86400
    patches = [r for r in influx.requests if r.method == "PATCH"]
    assert [r.path for r in patches] == ["/api/v2/buckets/0000000000000009"]
    assert cli.main(["influx", "ensure-buckets"]) == 0
    assert "pattern_aggregates_daily: exists" in capsys.readouterr().out
    # The clean-up the live tests and the bench use: deletes what exists, once.
    assert resource(influx).delete_bucket("water-quality") is True
    assert "water-quality" not in influx.buckets
    assert resource(influx).delete_bucket("water-quality") is False


def _use_catalogue(monkeypatch, fake: FakeInflux, tmp_path: Path, catalogue) -> None:
    """The command line's configuration: this catalogue, this InfluxDB."""
    path = tmp_path / "catalogue.yaml"
    path.write_text(catalogue.model_dump_json())
    monkeypatch.setenv("AGG_PIPELINE_CATALOGUE", str(path))
    monkeypatch.setenv("INFLUXDB_URL", fake.url)
    monkeypatch.setenv("INFLUXDB_TOKEN", fake.token)
    monkeypatch.setenv("INFLUXDB_ORG", fake.org)
    get_settings.cache_clear()
    get_catalogue.cache_clear()


# ------------------------------------------------------------------------ 6. status
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_status_reports_influx_connected_and_survives_influxdb_down(influx, monkeypatch):
    assert status_mod.influx_connection(load_catalogue("hydroponics")) == (
        None, "the catalogue uses no InfluxDB")  # fmt: skip
    up = status_mod.influx_connection(WQ, resource(influx))
    assert up[0] is True and up[1].startswith("pass")
    assert [r.path for r in influx.requests] == ["/health"]
    down = InfluxResource(url=f"http://127.0.0.1:{_closed_port()}", token="t", org="o")
    started = time.monotonic()
    ok, detail = status_mod.influx_connection(WQ, down, timeout_s=0.5)
    assert ok is False and "refused" in detail.lower()
    assert time.monotonic() - started < 2
    # The whole report: InfluxDB down is a finding, not a crash.
    monkeypatch.setattr(status_mod, "get_catalogue", lambda: WQ)
    dead = sa.create_engine(f"postgresql+psycopg2://x@127.0.0.1:{_closed_port()}/x")
    result = status_mod.collect(defs, None, dead, "test", days=1, influx=down)
    assert result.influx_connected is False and result.as_dict()["influx_connected"] is False
    assert any(p.startswith("InfluxDB unreachable") for p in result.problems)
    assert "influxdb: UNREACHABLE" in status_mod.render(result)


# ------------------------------------------------------------------- live InfluxDB
LIVE = all(os.environ.get(k) for k in ("INFLUXDB_URL", "INFLUXDB_TOKEN", "INFLUXDB_ORG"))


@pytest.mark.skipif(not LIVE, reason="live InfluxDB tests: set INFLUXDB_URL, INFLUXDB_TOKEN, "
                    "INFLUXDB_ORG to run them against a real InfluxDB 2.x")  # fmt: skip
def test_live_pattern_bucket_round_trip_and_retention():
    """The pattern bucket on a real InfluxDB: the reader's pivot / filters / aggregates
    (Flux run by InfluxDB itself) give back exactly what was written, and a differing
    retention is corrected; a temporary bucket, deleted after."""
    live = InfluxResource.from_env()
    bucket = f"agg_pipeline_test_{uuid.uuid4().hex[:8]}"
    assert live.ensure_bucket(bucket, 7) == "created"
    try:
        assert live.ensure_bucket(bucket, 7) == "exists"
        assert live.ensure_bucket(bucket, 8).startswith("retention differs: 7 d -> 8 d")
        assert live.ensure_bucket(bucket, 8, apply=True) == "retention corrected: 7 d -> 8 d"
        assert live.ensure_bucket(bucket, 8) == "exists"

        days = [date.today() - timedelta(days=3), date.today() - timedelta(days=2)]
        written = [a for d in days for a in patterns.sample_aggregates(60, day=d)]
        for det in patterns.DETECTORS.values():
            rows = [a.model_dump() for a in written if isinstance(a, det.model)]
            live.write_lines(bucket, influx_sink.pattern_lines(det, rows))
        reader = patterns_influx.InfluxPatterns(live, bucket)
        for name, det in patterns.DETECTORS.items():
            mine = sorted((a for a in written if isinstance(a, det.model)),
                          key=lambda a: (a.day, getattr(a, det.key)))  # fmt: skip
            got = patterns.query(reader, name, days[0], days[1])
            assert got.problems == [] and got.rows == mine, name
            key = getattr(mine[0], det.key)
            metric = det.numeric_fields[0]
            sums = patterns.aggregate(reader, name, metric, days[0], days[1], "sum")
            assert sums[key] == pytest.approx(
                sum(float(getattr(a, metric)) for a in mine if getattr(a, det.key) == key)
            )
        one = patterns.query(reader, "time_based", days[0], days[1], entity_id="light.room_0")
        assert [r.entity_id for r in one.rows] == ["light.room_0"] * 2
    finally:
        live.delete_bucket(bucket)


# ---------------------------------------------------------------- 5. the walk-through
def test_the_walk_through_names_only_commands_that_exist(project_root):
    """README "Switching off the six Flux tasks": each agg-pipeline line parses with the
    real parser, and the shipped catalogue it names is the seed-000 system."""
    readme = (project_root / "README.md").read_text()
    section = readme.split("### Switching off the six Flux tasks", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    commands = [line.split("#", 1)[0].split() for line in block.splitlines()]
    ours = [c[1:] for c in commands if c and c[0] == "agg-pipeline"]
    assert len(ours) >= 6
    for argv in ours:
        cli.build_parser().parse_args(argv)  # SystemExit on an unknown command or flag
    assert {tuple(a[:3]) for a in ours} >= {("influx", "tasks", "disable"),
                                             ("influx", "tasks", "delete")}  # fmt: skip
    assert ["influx", "compare"] in [a[:2] for a in ours]
    assert any(c[:3] == ["dagster", "asset", "materialize"] and "--partition-range" in c
               for c in commands)  # fmt: skip
    assert "AGG_PIPELINE_CATALOGUE=water_quality_influx" in block

    src, sink = WQ.source, WQ.influx_sink
    assert (src.kind, src.bucket, src.measurement) == ("influxdb", "water-quality", "water_quality")
    assert set(WQ.fields) == {"temperature", "conductivity"}
    assert (sink.bucket, sink.measurement, sink.window_time) == ("water-quality", "water_quality",
                                                                 "stop")  # fmt: skip
    assert sink.readings_1m and sink.readings_5m and sink.retention_days is None
