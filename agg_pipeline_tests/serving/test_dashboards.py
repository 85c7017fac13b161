"""Derived metrics, diagnostics, dashboard queries and real-time views."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from agg_pipeline.config.catalogue import CatalogueError, load_catalogue, parse_catalogue
from agg_pipeline.config.settings import Settings
from agg_pipeline.core import formulas
from agg_pipeline.core.windows import Window
from agg_pipeline.demo import readings as simulator
from agg_pipeline.serving import dashboard
from agg_pipeline.sources import readings_source
from agg_pipeline.warehouse import realtime
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline.warehouse.writes import devices as writers_devices
from agg_pipeline.warehouse.writes import readings as writers
from agg_pipeline_tests import reference

OIL = load_catalogue("oil_well")
DAY = datetime(2026, 11, 2, tzinfo=UTC)


def context(url: str, catalogue=OIL, **settings) -> writers.WriteContext:
    warehouse = WarehouseResource(database_url=url)
    s = Settings(**settings)
    return writers.WriteContext(
        warehouse, readings_source(catalogue, warehouse.get_engine(), s.parallelism), catalogue, s
    )


# ---------------------------------------------------------------------------- formulas


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("__import__('os').system('rm -rf /')", "unknown function"),
        ("flow_rate.avg ** 2", "operator Pow"),
        ("flow_rate", "alone is not a value"),
        ("oil.avg", "unknown field 'oil'"),
        ("flow_rate.mean", "unknown statistic 'mean'"),
        ("'a' + 1", "only numbers"),
        ("clamp(flow_rate.avg, 0)", "takes 3 arguments"),
        ("anomalies(vibration, -1)", "z > 0"),
        ("flow_rate.avg if 1 else 2", "IfExp is not allowed"),
        ("(lambda: 1)()", "unknown function"),
        ("flow_rate.avg +", "not a valid expression"),
    ],
)
def test_formulas_reject_anything_but_arithmetic(formula, message):
    with pytest.raises(formulas.FormulaError, match=message):
        formulas.parse(formula, list(OIL.fields))


def test_bad_formula_fails_catalogue_load_naming_the_metric():
    text = (
        "name: x\nsample_interval_seconds: 1\nfields:\n"
        "  a: {sensor_type: A, unit: u, min: 0, max: 1}\n"
        "derived:\n  score: {formula: 'a.avg / b.avg', unit: u}\n"
    )
    with pytest.raises(CatalogueError, match=r"derived\.score\.formula: unknown field 'b'"):
        parse_catalogue(text, "x.yaml")


@pytest.mark.parametrize(
    ("formula", "columns", "expected"),
    [
        ("f.avg / g.avg", {"f0_avg": 6.0, "f1_avg": 3.0}, 2.0),
        ("f.avg / g.avg", {"f0_avg": 6.0, "f1_avg": 0.0}, None),  # no division by zero
        ("clamp(100 - 30 * (f.max - 4) / 4, 0, 100)", {"f0_max": 6.0}, 85.0),
        ("min(f.avg, g.avg) + max(f.avg, 1)", {"f0_avg": 2.0, "f1_avg": 5.0}, 4.0),
        ("min(f.avg, g.avg)", {"f0_avg": None, "f1_avg": 5.0}, None),  # missing stays missing
        ("ln(f.avg) + sqrt(g.avg)", {"f0_avg": 1.0, "f1_avg": 9.0}, 3.0),
        ("ln(f.avg)", {"f0_avg": -1.0}, None),
        ("-abs(f.min) + exp(0)", {"f0_min": -2.5}, -1.5),
    ],
)
def test_compiled_formulas_compute_in_postgres(engine, formula, columns, expected):
    compiled = formulas.compile_sql(formula, ["f", "g"])
    cols = ", ".join(f"CAST(:{k} AS float8) AS {k}" for k in columns)
    with engine.connect() as conn:
        value = conn.execute(
            sa.text(f"SELECT {compiled.sql} FROM (SELECT {cols}) AS t"), columns
        ).scalar()
    assert value == (pytest.approx(expected) if expected is not None else None)


# ------------------------------------------------------------------ derived metrics


def _oil_well_hour(engine, url):
    spec = simulator.SimulationSpec(start=DAY, days=2 / 24, devices=3, hz=0.2, seed=3)
    simulator.write(engine, OIL, spec)
    # a vibration spike at 00:30 on WELL-001 makes anomalies and a health penalty
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO raw.readings SELECT :t + make_interval(secs => g), 'WELL-001', "
                "'vibration', 7.5 FROM generate_series(0, 59, 5) AS g"
            ),
            {"t": DAY + timedelta(minutes=30)},
        )
    ctx = context(url)
    window = Window(DAY, DAY + timedelta(hours=2))
    writers.write_readings_1m(ctx, window)
    writers.write_merged_level(ctx, writers.LEVEL_HOURLY, window)
    return ctx, window


def test_device_metrics_match_hand_computation(warehouse_url, engine):
    ctx, window = _oil_well_hour(engine, warehouse_url)
    report = writers_devices.write_device_performance(ctx, window)
    assert report.rows_written == 3 * 2 * 3  # devices x hours x metrics

    raw = reference.load_raw(engine, window.start, window.end)
    valid = reference.valid_readings(raw, OIL, datetime.now(UTC))
    valid["hour"] = valid["time"].dt.floor("1h")
    hourly = (
        valid.groupby(["device", "hour", "field"])["value"]
        .agg(["mean", "min", "max", "std"])
        .unstack("field")
    )
    minute = (
        valid.assign(minute=valid["time"].dt.floor("1min"))
        .groupby(["device", "hour", "field", "minute"])["value"]
        .mean()
    )
    expected = {}
    for (device, hour), row in hourly.iterrows():
        eff = row[("mean", "flow_rate")] / row[("mean", "motor_power")]
        health = 100.0
        health -= 30 * np.clip((row[("max", "vibration")] - 4) / 4, 0, 1)
        health -= 40 * np.clip((row[("max", "motor_temperature")] - 120) / 30, 0, 1)
        health -= 30 * np.clip((500 - row[("min", "intake_pressure")]) / 500, 0, 1)
        anomalies = 0
        for f in ("vibration", "motor_current"):
            m = minute.loc[(device, hour, f)]
            anomalies += int((abs(m - row[("mean", f)]) > 3 * row[("std", f)]).sum())
        expected[(device, hour)] = {
            "efficiency": eff,
            "health": float(np.clip(health, 0, 100)),
            "anomaly_count": float(anomalies),
        }
    with engine.connect() as conn:
        got = pd.read_sql(sa.text("SELECT * FROM bi.v_device_performance_hourly"), conn)
    assert len(got) == len(expected) * 3
    for row in got.itertuples():
        want = expected[(row.device_code, pd.Timestamp(row.hour_start))][row.metric]
        assert row.value == pytest.approx(want, rel=1e-9), (row.device_code, row.metric)
    spike = got[
        (got.device_code == "WELL-001") & (got.metric == "health") & (got.hour_start == DAY)
    ].value.iloc[0]
    assert spike < 100  # the vibration spike costs health
    units = dict(got[["metric", "unit"]].drop_duplicates().values)
    assert units["efficiency"] == "bbl/d per kW"
    with engine.connect() as conn:
        assert writers_devices.metrics_out_of_bounds(conn, window) == {}


def test_metrics_outside_declared_bounds_are_reported(warehouse_url, engine, tmp_path):
    narrow = OIL.model_copy(
        update={
            "derived": {
                "efficiency": OIL.derived["efficiency"].model_copy(update={"max": 0.5}),
            }
        }
    )
    ctx, window = _oil_well_hour(engine, warehouse_url)
    ctx = writers.WriteContext(ctx.warehouse, ctx.source, narrow, ctx.settings)
    writers_devices.write_device_performance(ctx, window)
    with engine.connect() as conn:
        assert writers_devices.metrics_out_of_bounds(conn, window) == {"efficiency": 6}


# ----------------------------------------------------------------------- diagnostics


def test_diagnostic_summary_matches_pandas(warehouse_url, engine):
    n = simulator.write_diagnostics(engine, OIL, DAY, 2, devices=3, per_device_per_day=40)
    report = writers_devices.write_diagnostic_summary(
        context(warehouse_url), Window(DAY, DAY + timedelta(days=2))
    )
    with engine.connect() as conn:
        raw = pd.read_sql(sa.text("SELECT * FROM raw.diagnostics"), conn)
        got = pd.read_sql(sa.text("SELECT * FROM bi.v_diagnostic_summary_daily"), conn)
    raw["day"] = raw["time"].dt.date
    ok = raw["confidence"].between(0, 1)
    assert report.raw_rows_read == n == len(raw)
    assert report.rejected["invalid_severity_or_confidence"] == int((~ok).sum()) > 0
    good = raw[ok]
    for row in got.itertuples():
        mine = good[(good.device == row.device_code) & (good.day == row.metric_date)]
        assert row.diagnostics_count == len(mine)
        assert row.by_severity == mine["severity"].value_counts().to_dict()
        assert row.by_type == mine["diagnosis_type"].value_counts().to_dict()
        assert row.confidence_avg == pytest.approx(mine["confidence"].mean(), rel=1e-12)
        assert row.confidence_max == mine["confidence"].max()
    assert len(got) == 3 * 2


# ------------------------------------------------------------------ dashboard queries


def test_hourly_read_plans_no_parallel_workers(warehouse_url, engine):
    """The real-time view's live half reads raw from a watermark the planner cannot see, and
    on a large raw table it planned a parallel scan whose workers' start-up was most of the
    read (bench: p50 16 ms for ~1 ms of work). The hourly read turns workers off for its
    own transaction. Planner costs that make every scan parallel here, on a few rows, show
    both sides: the read's own statement, explained inside its transaction, has no Gather;
    the same statement in a plain transaction has one."""
    _oil_well_hour(engine, warehouse_url)
    cheap = {
        "parallel_setup_cost": "0",
        "parallel_tuple_cost": "0",
        "min_parallel_table_scan_size": "0",
        "min_parallel_index_scan_size": "0",
        "max_parallel_workers_per_gather": "2",
    }
    costly = sa.create_engine(
        warehouse_url,
        connect_args={"options": " ".join(f"-c {k}={v}" for k, v in cheap.items())},
    )
    plans: list[str] = []
    reads: list[tuple[str, object]] = []

    def explain(conn, cursor, statement, parameters, context, executemany):
        if "hourly_sensor_agg_realtime" in statement and not statement.startswith("EXPLAIN"):
            reads.append((statement, parameters))
            # Another cursor of the same connection: same transaction, rows left intact.
            with conn.connection.dbapi_connection.cursor() as other:
                other.execute("EXPLAIN " + statement, parameters)
                plans.append("\n".join(row[0] for row in other.fetchall()))

    sa.event.listen(costly, "after_cursor_execute", explain)
    try:
        rows = dashboard.hourly_for_device(
            costly, "WELL-002", hours=3, now=DAY + timedelta(hours=2)
        )
        assert len(rows) == 7 * 2 and len(plans) == 1
        assert "Gather" not in plans[0]
        sa.event.remove(costly, "after_cursor_execute", explain)
        # The control: the very statement and parameters of the read, explained in a plain
        # transaction of the same engine (no setting), plans workers.
        ((statement, parameters),) = reads
        with costly.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            cursor.execute("EXPLAIN " + statement, parameters)
            plain = "\n".join(row[0] for row in cursor.fetchall())
        assert "Gather" in plain
    finally:
        costly.dispose()


def test_dashboard_queries_validate_and_answer(warehouse_url, engine):
    ctx, window = _oil_well_hour(engine, warehouse_url)
    writers_devices.write_device_performance(ctx, window)
    simulator.write_diagnostics(engine, OIL, DAY, 1, devices=3)
    writers_devices.write_diagnostic_summary(ctx, Window(DAY, DAY + timedelta(days=1)))
    now = DAY + timedelta(hours=2)

    with pytest.raises(dashboard.DashboardError, match="unknown device 'WELL-999'"):
        dashboard.hourly_for_device(engine, "WELL-999", now=now)
    with pytest.raises(dashboard.DashboardError, match="hours must be an integer from 1"):
        dashboard.hourly_for_device(engine, "WELL-001", hours=10_000, now=now)
    with pytest.raises(dashboard.DashboardError, match="limit"):
        dashboard.ranking(engine, "health", limit=0, now=now)
    with pytest.raises(dashboard.DashboardError, match="unknown metric 'speed'"):
        dashboard.ranking(engine, "speed", now=now)

    hourly = dashboard.hourly_for_device(engine, "WELL-002", hours=3, now=now)
    assert {r["field"] for r in hourly} == set(OIL.fields) and len(hourly) == 7 * 2
    perf = dashboard.performance_for_device(engine, "WELL-001", hours=3, now=now)
    assert {r["metric"] for r in perf} == {"efficiency", "health", "anomaly_count"}
    diag = dashboard.diagnostics_summary(engine, days=30, device="WELL-003", today=DAY.date())
    assert diag and all(r["device_code"] == "WELL-003" for r in diag)

    everyone = pd.DataFrame(dashboard.all_devices_performance(engine, hours=3, now=now))
    by_eff = everyone[everyone.metric == "efficiency"].sort_values("value", ascending=False)
    ranked = dashboard.ranking_by_efficiency(engine, hours=3, now=now)
    assert [r["device_code"] for r in ranked] == list(by_eff.device_code)
    assert [r["rank"] for r in ranked] == [1, 2, 3]
    assert ranked[0]["value"] == pytest.approx(by_eff.value.iloc[0])
    worst_first = dashboard.ranking(engine, "health", hours=3, descending=False, now=now)
    assert worst_first[0]["value"] <= worst_first[-1]["value"]


# -------------------------------------------------------------------- real-time views


def test_realtime_views_seam_neither_drops_nor_double_counts(warehouse_url, engine):
    hydro = load_catalogue("hydroponics")
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    start = hour - timedelta(hours=1)
    spec = simulator.SimulationSpec(
        start=start, days=(now - start).total_seconds() / 86400 - 10 / 86400, devices=2, hz=0.2
    )
    simulator.write(engine, hydro, spec)
    ctx = context(warehouse_url, hydro)
    # The open hour's 1m job and the previous hour's rollup, as the schedules run them.
    writers.write_readings_1m(ctx, Window(start, hour + timedelta(hours=1)))
    writers.write_merged_level(ctx, writers.LEVEL_HOURLY, Window(start, hour))
    with engine.connect() as conn:
        w1 = conn.execute(
            sa.text("SELECT complete_until FROM ops.watermarks WHERE table_name='bi.readings_1m'")
        ).scalar_one()
    assert w1 <= now and (now - w1) < timedelta(minutes=2)
    # Readings land after the materialization: in the open minute and after it. Never
    # before w1 (in the first seconds of a minute, now - 4 s is in the closed minute: a
    # late reading, which this test is not about).
    fresh = [
        (
            max(
                datetime.now(UTC) - timedelta(seconds=s), w1 + timedelta(milliseconds=10 * (5 - s))
            ),
            "arduino_001",
            "ph",
            6.2 + s / 100,
        )
        for s in (4, 3, 2)
    ]
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO raw.readings VALUES (:t, :d, :f, :v)"),
            [{"t": t, "d": d, "f": f, "v": v} for t, d, f, v in fresh],
        )

    raw = reference.load_raw(engine, start, datetime.now(UTC) + timedelta(minutes=1))
    valid = reference.valid_readings(raw, hydro, datetime.now(UTC) + timedelta(minutes=5))
    expected = reference.grouped_stats(valid, valid["time"].dt.floor("1min"))
    with engine.connect() as conn:
        view = pd.read_sql(
            sa.text(
                "SELECT dv.device_code AS device, s.field, v.window_start AS bucket, "
                "v.sample_count, v.mean_value AS mean, v.min_value, v.max_value, v.live "
                "FROM bi.readings_1m_realtime v JOIN iot.sensors s ON s.id = v.sensor_id "
                "JOIN iot.devices dv ON dv.id = s.device_id WHERE v.window_start >= :s"
            ),
            conn,
            params={"s": start},
        )
    # one row per window: nothing counted twice at the seam
    assert not view.duplicated(["device", "field", "bucket"]).any()
    merged = expected.merge(view, on=["device", "field", "bucket"], how="outer", indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"]
    assert (merged["count"] == merged["sample_count"]).all()
    assert merged["mean_y"].to_numpy() == pytest.approx(merged["mean_x"].to_numpy(), rel=1e-9)
    assert view["live"].any() and (~view["live"]).any()
    assert (view[view.live].bucket >= w1).all() and (view[~view.live].bucket < w1).all()

    # hourly: the previous hour materialized, the open hour live - both equal to raw
    expected_h = reference.grouped_stats(valid, valid["time"].dt.floor("1h"))
    with engine.connect() as conn:
        hourly = pd.read_sql(
            sa.text(
                "SELECT dv.device_code AS device, s.field, v.hour_start AS bucket, "
                "v.sample_count, v.avg_value AS mean, v.min_value, v.max_value, "
                "v.stddev_value, v.median_value, v.live "
                "FROM bi.hourly_sensor_agg_realtime v JOIN iot.sensors s ON s.id = v.sensor_id "
                "JOIN iot.devices dv ON dv.id = s.device_id WHERE v.hour_start >= :s"
            ),
            conn,
            params={"s": start},
        )
    assert set(hourly[hourly.live].bucket) == {pd.Timestamp(hour)}
    assert set(hourly[~hourly.live].bucket) == {pd.Timestamp(start)}
    from agg_pipeline_tests.warehouse.test_rollups import assert_matches

    assert_matches(hourly.drop(columns="live"), expected_h)


def test_realtime_view_sql_is_generated_for_the_catalogue_source(tmp_path):
    custom = parse_catalogue(
        "name: x\nsample_interval_seconds: 1\nsource: {table: my.telemetry, time_column: ts,"
        " device_column: well}\nfields: {a: {sensor_type: A, unit: u, min: 0, max: 1}}\n",
        "x.yaml",
    )
    sql = "\n".join(realtime.view_statements(custom, Settings(timezone="Europe/Berlin")))
    assert '"my"."telemetry"' in sql and 'r."ts"' in sql and 'r."well"' in sql
    assert "'Europe/Berlin'" in sql


def test_daily_realtime_covers_today_live(warehouse_url, engine):
    hydro = load_catalogue("hydroponics")
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = today - timedelta(days=1)
    simulator.write(
        engine,
        hydro,
        simulator.SimulationSpec(
            start=yesterday,
            days=1 + 0.9 * (datetime.now(UTC) - today).total_seconds() / 86400,
            devices=1,
            hz=0.01,
        ),
    )
    ctx = context(warehouse_url, hydro)
    writers.write_readings_1m(ctx, Window(yesterday, today))
    writers.write_merged_level(ctx, writers.LEVEL_HOURLY, Window(yesterday, today))
    writers.write_daily(ctx, Window(yesterday, today))
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT metric_date, live, sum(sample_count) FROM bi.daily_sensor_agg_realtime "
                "GROUP BY 1, 2 ORDER BY 1"
            )
        ).all()
    raw = reference.load_raw(engine, today, datetime.now(UTC) + timedelta(minutes=1))
    valid = reference.valid_readings(raw, hydro, datetime.now(UTC) + timedelta(minutes=5))
    assert [(r[0], r[1]) for r in rows] == [(yesterday.date(), False), (today.date(), True)]
    assert rows[1][2] == len(valid) > 0  # today so far, live from raw


def test_dashboard_views_exist_for_bi_tools(engine):
    with engine.connect() as conn:
        views = set(
            conn.execute(
                sa.text("SELECT table_name FROM information_schema.views WHERE table_schema='bi'")
            ).scalars()
        )
    assert {
        "v_hourly_readings",
        "v_daily_readings",
        "v_device_performance_hourly",
        "v_diagnostic_summary_daily",
        "readings_1m_realtime",
        "hourly_sensor_agg_realtime",
        "daily_sensor_agg_realtime",
    } <= views


def test_old_import_paths_are_the_moved_modules():
    import agg_pipeline.dashboard
    import agg_pipeline.patterns
    from agg_pipeline import dashboard as by_from
    from agg_pipeline.serving import dashboard, patterns

    assert agg_pipeline.dashboard is dashboard is by_from
    assert agg_pipeline.patterns is patterns
    assert callable(agg_pipeline.patterns.query)
