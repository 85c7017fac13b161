"""Adopting an existing database: the old ETL's tables of another shape are found before any
change, set aside with every row by ``migrate --adopt``, and their history imported into
the rollups, where rows computed from raw always win."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from agg_pipeline import cli
from agg_pipeline.config.catalogue import load_catalogue
from agg_pipeline.core.windows import Window
from agg_pipeline.defs.assets import (
    daily_rollup_and_conditions,
    readings_1m,
    readings_5m,
    rollup_hourly,
)
from agg_pipeline.defs.readings import checks
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.sources import history
from agg_pipeline.warehouse import migrate, schema_compat
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline_tests import data
from agg_pipeline_tests.conftest import SESSION_TAG, create_database, drop_database
from agg_pipeline_tests.faults.checksums import checksums
from agg_pipeline_tests.influx_server import FakeInflux

CATALOGUE = load_catalogue("hydroponics")

# The old ETL's schema (seeds/004): sensors without a field column (the sensor type says
# what is measured), rollups with only mean/min/max/count, an int count, a serial id, the
# old unique index uq_daily_sensor_metric, and its watermarks in core.system_config.
OLD_ETL = """
CREATE SCHEMA iot; CREATE SCHEMA bi; CREATE SCHEMA core; CREATE SCHEMA crop;
CREATE TABLE iot.devices (id serial PRIMARY KEY, device_code text NOT NULL UNIQUE,
    name text, location text, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE iot.sensor_types (id serial PRIMARY KEY, name text NOT NULL UNIQUE,
    unit text NOT NULL, description text);
CREATE TABLE iot.sensors (id serial PRIMARY KEY,
    device_id integer NOT NULL REFERENCES iot.devices (id),
    sensor_type_id integer NOT NULL REFERENCES iot.sensor_types (id),
    sensor_code text NOT NULL UNIQUE, is_active boolean NOT NULL DEFAULT true,
    installed_on date NOT NULL);
CREATE TABLE bi.hourly_sensor_agg (id bigserial PRIMARY KEY,
    sensor_id integer NOT NULL REFERENCES iot.sensors (id), hour_start timestamptz NOT NULL,
    avg_value double precision, min_value double precision, max_value double precision,
    sample_count integer, UNIQUE (sensor_id, hour_start));
CREATE INDEX hourly_sensor_agg_hour ON bi.hourly_sensor_agg (hour_start);
CREATE TABLE bi.daily_sensor_agg (id bigserial PRIMARY KEY,
    sensor_id integer NOT NULL REFERENCES iot.sensors (id), metric_date date NOT NULL,
    avg_value double precision, min_value double precision, max_value double precision,
    sample_count integer, time_in_optimal_pct numeric(5, 2), time_in_critical_pct numeric(5, 2));
CREATE UNIQUE INDEX uq_daily_sensor_metric ON bi.daily_sensor_agg (sensor_id, metric_date);
CREATE TABLE core.system_config (key text PRIMARY KEY, value jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE crop.batches (id serial PRIMARY KEY, batch_code text NOT NULL UNIQUE,
    crop_name text NOT NULL, stage_name text NOT NULL, started_on date NOT NULL, ended_on date);

INSERT INTO iot.devices (device_code, name) VALUES ('arduino_1', 'rack A'), ('arduino_2', 'rack B');
INSERT INTO iot.sensor_types (name, unit) VALUES
    ('DHT20_TEMPERATURE', 'C'), ('PH_SENSOR', 'pH'), ('CO2_SENSOR', 'ppm');
INSERT INTO iot.sensors (device_id, sensor_type_id, sensor_code, installed_on) VALUES
    (1, 1, 'arduino_1_temp', '2025-01-01'), (1, 2, 'arduino_1_ph', '2025-01-01'),
    (2, 1, 'arduino_2_temp', '2025-01-01'), (2, 3, 'arduino_2_co2', '2025-01-01');
-- 2026-06-01 00:00 .. 03:00 for sensors 1..4; sensor 4's type is unknown to the catalogue.
INSERT INTO bi.hourly_sensor_agg (sensor_id, hour_start, avg_value, min_value, max_value,
    sample_count)
SELECT s, timestamptz '2026-06-01 00:00+00' + h * interval '1 hour',
       20 + s + h / 10.0, 19 + s, 22 + s + h, 360 - h
FROM generate_series(1, 4) AS s, generate_series(0, 3) AS h;
-- One broken old row (min above max): counted as invalid, never written.
INSERT INTO bi.hourly_sensor_agg (sensor_id, hour_start, avg_value, min_value, max_value,
    sample_count) VALUES (1, '2026-06-01 05:00+00', 5, 9, 1, 10);
INSERT INTO bi.daily_sensor_agg (sensor_id, metric_date, avg_value, min_value, max_value,
    sample_count, time_in_optimal_pct, time_in_critical_pct) VALUES
    (1, '2026-06-01', 21.5, 18.0, 26.0, 8640, 91.25, 0.50),
    (2, '2026-06-01', 6.1, 5.6, 6.7, 8640, 88.00, 1.00),
    (3, '2026-06-01', 23.0, 20.0, 27.0, 1, NULL, NULL);
INSERT INTO core.system_config (key, value) VALUES
    ('etl_hourly_watermark', '{"timestamp": "2026-06-01T03:00:00+00:00"}'),
    ('etl_daily_watermark', '{"timestamp": "2026-06-01T00:00:00+00:00"}');
INSERT INTO crop.batches (batch_code, crop_name, stage_name, started_on)
VALUES ('REAL-1', 'lettuce', 'mature', '2026-05-01');
"""
OLD_TABLES = [
    "iot.devices",
    "iot.sensor_types",
    "iot.sensors",
    "bi.hourly_sensor_agg",
    "bi.daily_sensor_agg",
    "core.system_config",
    "crop.batches",
]
SET_ASIDE = ["iot.sensors", "bi.hourly_sensor_agg", "bi.daily_sensor_agg"]


def _relations(engine: sa.Engine) -> set[tuple[str, str, str]]:
    """Every relation (schema, name, kind) outside the system schemas: a changed, added or
    renamed table, index, sequence or view shows here."""
    with engine.connect() as conn:
        return {
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT n.nspname, c.relname, c.relkind::text FROM pg_class AS c "
                    "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
                    "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
                )
            )
        }


@pytest.fixture
def old_db(pg_server_url, monkeypatch):
    """A database holding the old ETL's schema and rows, never migrated by us."""
    name = f"aggold_{SESSION_TAG}_{uuid.uuid4().hex[:8]}"
    url = create_database(pg_server_url, name)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        conn.connection.dbapi_connection.cursor().execute(OLD_ETL)
        conn.connection.dbapi_connection.commit()
    monkeypatch.setenv("DATABASE_URL", url)
    from agg_pipeline.config.settings import get_settings

    get_settings.cache_clear()
    yield url, engine
    engine.dispose()
    from agg_pipeline.warehouse.engine import engine_for

    engine_for(url).dispose()
    drop_database(pg_server_url, name)


def test_migrate_names_every_incompatible_table_and_changes_nothing(old_db, capsys):
    url, engine = old_db
    before_rows = checksums(engine, OLD_TABLES)
    before_relations = _relations(engine)

    with pytest.raises(migrate.IncompatibleSchema) as err:
        migrate.migrate(engine, views=False)
    message = str(err.value)
    assert {i.table for i in err.value.found} == set(SET_ASIDE)
    for expected in (
        "iot.sensors (created by 003_iot.sql)",
        "column field (text) is missing",
        "column installed_on is NOT NULL without a default",
        "bi.hourly_sensor_agg (created by 006_rollups.sql)",
        "column m2 (double precision) is missing",
        "column sample_count is integer, bigint is expected",
        "bi.daily_sensor_agg",
        "column time_in_optimal_pct is numeric(5,2), double precision is expected",
        "agg-pipeline migrate --adopt",
        "bi.hourly_sensor_agg -> hourly_sensor_agg_legacy",
    ):
        assert expected in message, expected
    # Compatible old tables are not named (extra nullable column, same keys).
    assert "iot.devices" not in message and "crop.batches" not in message
    assert _relations(engine) == before_relations  # not even ops.schema_migrations
    assert checksums(engine, OLD_TABLES) == before_rows

    # The command says the same and exits 2, still changing nothing.
    assert cli.main(["migrate"]) == 2
    out = capsys.readouterr().err
    assert "column m2 (double precision) is missing" in out and "--adopt" in out
    assert _relations(engine) == before_relations


def test_adopt_sets_old_tables_aside_with_their_rows_then_migrates(old_db):
    url, engine = old_db
    before = checksums(engine, OLD_TABLES)
    applied = migrate.migrate(engine, adopt=True)
    assert applied == [m.name for m in migrate.discover()]

    # Every old row survives unchanged, under <name>_legacy in the same schema.
    after = checksums(
        engine, [f"{t}_legacy" for t in SET_ASIDE] + [t for t in OLD_TABLES if t not in SET_ASIDE]
    )
    for table in OLD_TABLES:
        moved = f"{table}_legacy" if table in SET_ASIDE else table
        if table != "iot.sensor_types":
            assert after[moved] == before[table], table
    # iot.sensor_types is kept (compatible) and gains 012's two nullable columns; its old
    # columns are unchanged.
    with engine.connect() as conn:
        types = conn.execute(
            sa.text("SELECT id, name, unit, description FROM iot.sensor_types ORDER BY id")
        ).all()
    assert [tuple(t) for t in types] == [
        (1, "DHT20_TEMPERATURE", "C", None),
        (2, "PH_SENSOR", "pH", None),
        (3, "CO2_SENSOR", "ppm", None),
    ]
    with engine.connect() as conn:
        expected = schema_compat.expected_tables((m.name, m.sql) for m in migrate.discover())
        assert schema_compat.find_incompatible(conn, expected) == []
        # Our index names are on our tables; the old ones moved with theirs.
        owners = dict(
            conn.execute(
                sa.text(
                    "SELECT indexname, tablename FROM pg_indexes "
                    "WHERE indexname LIKE 'uq_daily_sensor_metric%' "
                    "OR indexname LIKE 'hourly_sensor_agg_hour%'"
                )
            ).all()
        )
        # The old legacy table kept its foreign key to the old sensors (ids mean old rows).
        fk_target = conn.execute(
            sa.text(
                "SELECT confrelid::regclass::text FROM pg_constraint "
                "WHERE conrelid = 'bi.hourly_sensor_agg_legacy'::regclass AND contype = 'f'"
            )
        ).scalar_one()
        demo = conn.execute(
            sa.text("SELECT count(*) FROM crop.batches WHERE batch_code LIKE 'DEMO%'")
        ).scalar_one()
        stages = conn.execute(sa.text("SELECT count(*) FROM crop.growth_stage_definitions"))
    assert owners == {
        "uq_daily_sensor_metric": "daily_sensor_agg",
        "uq_daily_sensor_metric_legacy": "daily_sensor_agg_legacy",
        "hourly_sensor_agg_hour": "hourly_sensor_agg",
        "hourly_sensor_agg_hour_legacy": "hourly_sensor_agg_legacy",
    }
    assert fk_target == "iot.sensors_legacy"
    assert demo == 0 and stages.scalar_one() == 0  # migrate writes no demo rows

    # Idempotent: a second adopt (or plain migrate) finds nothing to do and changes nothing.
    relations = _relations(engine)
    assert migrate.migrate(engine, adopt=True) == []
    assert migrate.migrate(engine) == []
    assert _relations(engine) == relations


def test_concurrent_adopts_serialize_one_renames_the_other_finds_nothing(old_db):
    from concurrent.futures import ThreadPoolExecutor

    url, engine = old_db
    before = checksums(engine, SET_ASIDE)
    engines = [sa.create_engine(url) for _ in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda e: migrate.migrate(e, views=False, adopt=True), engines))
    finally:
        for e in engines:
            e.dispose()
    assert sorted(len(r) for r in results) == [0, len(migrate.discover())]
    after = checksums(engine, [f"{t}_legacy" for t in SET_ASIDE])
    assert [after[f"{t}_legacy"] for t in SET_ASIDE] == [before[t] for t in SET_ASIDE]


def test_fresh_database_gets_no_demo_rows_and_seed_adds_them(pg_server_url, monkeypatch):
    name = f"aggfresh_{SESSION_TAG}_{uuid.uuid4().hex[:8]}"
    url = create_database(pg_server_url, name)
    engine = sa.create_engine(url)
    try:
        migrate.migrate(engine, views=False)
        with engine.connect() as conn:
            empty = conn.execute(
                sa.text(
                    "SELECT (SELECT count(*) FROM crop.batches), "
                    "(SELECT count(*) FROM crop.growth_stage_definitions)"
                )
            ).one()
        assert tuple(empty) == (0, 0)
        monkeypatch.setenv("DATABASE_URL", url)
        from agg_pipeline.config.settings import get_settings

        get_settings.cache_clear()
        args = ["seed", "--days", "0.01", "--devices", "1", "--start", "2026-11-02"]
        assert cli.main(args) == 0
        assert cli.main([*args, "--if-empty"]) == 0  # repeatable
        with engine.connect() as conn:
            batches = conn.execute(sa.text("SELECT batch_code FROM crop.batches")).scalars()
            assert list(batches) == ["DEMO-LETTUCE-1"]
            assert (
                conn.execute(
                    sa.text("SELECT count(*) FROM crop.growth_stage_definitions")
                ).scalar_one()
                == 12
            )
    finally:
        engine.dispose()
        from agg_pipeline.warehouse.engine import engine_for

        engine_for(url).dispose()
        drop_database(pg_server_url, name)


def test_failing_migration_reports_postgres_message_and_changes_nothing(engine, tmp_path):
    folder = tmp_path / "sql"
    folder.mkdir()
    for m in migrate.discover():
        (folder / m.name).write_text(m.sql)
    (folder / "900_good.sql").write_text("CREATE TABLE bi.probe_ok (x integer);\n")
    (folder / "901_bad.sql").write_text(
        "CREATE TABLE bi.probe_half (x integer);\n"
        "ALTER TABLE bi.no_such_table ADD COLUMN y integer;\n"
    )
    before = _relations(engine)
    with pytest.raises(migrate.MigrationError) as err:
        migrate.migrate(engine, folder, views=False)
    message = str(err.value)
    assert "901_bad.sql failed" in message
    assert 'relation "bi.no_such_table" does not exist' in message
    assert "SQLSTATE 42P01" in message
    assert (
        "InFailedSqlTransaction" not in message and "current transaction is aborted" not in message
    )
    # One transaction: neither 900 nor the first statement of 901 is left behind.
    assert _relations(engine) == before
    with engine.connect() as conn:
        recorded = conn.execute(
            sa.text("SELECT count(*) FROM ops.schema_migrations WHERE filename LIKE '90%'")
        ).scalar_one()
    assert recorded == 0
    # Once fixed, it applies.
    (folder / "901_bad.sql").write_text("CREATE TABLE IF NOT EXISTS bi.probe_half (x integer);\n")
    assert migrate.migrate(engine, folder, views=False) == ["900_good.sql", "901_bad.sql"]


HOURLY_ASSETS = [readings_1m, readings_5m, rollup_hourly]
# Old sensor id -> (device, field) as the catalogue maps the old sensor types.
OLD_SENSORS = {
    1: ("arduino_1", "temperature"),
    2: ("arduino_1", "ph"),
    3: ("arduino_2", "temperature"),
}


def _materialize(url: str, assets, key: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        assets,
        resources={"warehouse": WarehouseResource(database_url=url), "influx": InfluxResource()},
        partition_key=key,
    )


def _raw_hour(engine: sa.Engine, hour: datetime, device: str, field: str, values: list[float]):
    step = timedelta(seconds=3600 / len(values))
    data.insert(engine, [(hour + i * step, device, field, v) for i, v in enumerate(values)])


def _rollup_rows(engine: sa.Engine, table: str, key: str) -> dict:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT dv.device_code, s.field, t.{key}, t.avg_value, t.min_value, t.max_value, "
                "t.sample_count, t.stddev_value, t.median_value, t.m2, t.first_reading_at, "
                f"t.origin FROM {table} AS t JOIN iot.sensors AS s ON s.id = t.sensor_id "
                "JOIN iot.devices AS dv ON dv.id = s.device_id"
            )
        ).all()
    return {(r[0], r[1], r[2]): r[3:] for r in rows}


def test_import_history_from_legacy_tables_raw_always_wins(old_db):
    url, engine = old_db
    migrate.migrate(engine, adopt=True)
    legacy_before = checksums(engine, [f"{t}_legacy" for t in SET_ASIDE])
    h0 = datetime(2026, 6, 1, tzinfo=UTC)

    # Raw still holds 02:00 of arduino_1's temperature: computed before the import.
    computed_02 = [21.0, 22.0, 23.5, 24.0]
    _raw_hour(engine, h0 + timedelta(hours=2), "arduino_1", "temperature", computed_02)
    assert _materialize(url, HOURLY_ASSETS, "2026-06-01-02:00").success
    before_import = _rollup_rows(engine, "bi.hourly_sensor_agg", "hour_start")

    report = history.import_legacy(engine, CATALOGUE)
    hourly = report.counts["bi.hourly_sensor_agg"]
    # 17 old rows: 4 of the CO2 sensor (not in the catalogue), 1 with min > max, 1 for the
    # computed (sensor, hour), 11 imported.
    assert hourly == {"read": 17, "unmapped": 4, "invalid": 1, "kept_computed": 1, "imported": 11}
    assert report.counts["bi.daily_sensor_agg"] == {"read": 3, "imported": 3}
    assert report.unmapped == {"arduino_2_co2"}

    got = _rollup_rows(engine, "bi.hourly_sensor_agg", "hour_start")
    key_02 = ("arduino_1", "temperature", h0 + timedelta(hours=2))
    assert got[key_02] == before_import[key_02]  # the computed row is untouched
    assert got[key_02][-1] == "computed"
    for old_id, (device, field) in OLD_SENSORS.items():
        for h in range(4):
            key = (device, field, h0 + timedelta(hours=h))
            if key == key_02:
                continue
            avg, mn, mx, n, sd, median, m2, first, origin = got[key]
            assert (origin, sd, median, m2, first) == ("imported", None, None, None, None)
            assert (n, mn, mx) == (360 - h, 19 + old_id, 22 + old_id + h)
            assert math.isclose(avg, 20 + old_id + h / 10.0, rel_tol=1e-12)
    assert len(got) == 12
    daily = _rollup_rows(engine, "bi.daily_sensor_agg", "metric_date")
    assert daily[("arduino_2", "temperature", date(2026, 6, 1))][5:7] == (None, 0.0)  # n=1: m2 0
    with engine.connect() as conn:
        pcts = conn.execute(
            sa.text(
                "SELECT time_in_optimal_pct, time_in_critical_pct FROM bi.daily_sensor_agg "
                "WHERE sample_count = 8640 ORDER BY 1"
            )
        ).all()
    assert [tuple(p) for p in pcts] == [(88.0, 1.0), (91.25, 0.5)]

    # Repeating the import writes nothing; the old tables are never changed.
    imported = checksums(engine, ["bi.hourly_sensor_agg", "bi.daily_sensor_agg"])
    again = history.import_legacy(engine, CATALOGUE)
    assert again.counts["bi.hourly_sensor_agg"]["imported"] == 0
    assert again.counts["bi.hourly_sensor_agg"]["unchanged"] == 11
    assert checksums(engine, ["bi.hourly_sensor_agg", "bi.daily_sensor_agg"]) == imported
    assert checksums(engine, [f"{t}_legacy" for t in SET_ASIDE]) == legacy_before

    # Checks do not fail on imported rows (NULL medians, spreads, no level below).
    window = Window(h0, h0 + timedelta(days=1))
    results = list(checks.evaluate(engine, "rollup_hourly", window, "UTC"))
    assert all(r.passed for r in results), [(r.check_name, r.metadata) for r in results]

    # Raw arrives for 01:00 of arduino_1's temperature: the computation replaces that one
    # imported row; the other sensors' imported rows of the same hour stay.
    late = [10.0, 12.0, 17.0]
    _raw_hour(engine, h0 + timedelta(hours=1), "arduino_1", "temperature", late)
    assert _materialize(url, HOURLY_ASSETS, "2026-06-01-01:00").success
    after = _rollup_rows(engine, "bi.hourly_sensor_agg", "hour_start")
    row = after[("arduino_1", "temperature", h0 + timedelta(hours=1))]
    assert row[-1] == "computed"
    assert (row[1], row[2], row[3], row[5]) == (10.0, 17.0, 3, 12.0)  # min, max, n, median
    assert math.isclose(row[0], 13.0, rel_tol=1e-12)
    for key, value in got.items():
        if key[2] == h0 + timedelta(hours=1) and key[:2] != ("arduino_1", "temperature"):
            assert after[key] == value
    assert len(after) == 12

    # The daily rollup merges only computed hours: arduino_1's temperature day is now from
    # raw (7 readings), the other imported days are kept; its checks pass.
    result = _materialize(url, [daily_rollup_and_conditions], "2026-06-01")
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations()), (
        result.get_asset_check_evaluations()
    )
    results = list(checks.evaluate(engine, "rollup_daily", window, "UTC"))
    assert all(r.passed for r in results), [(r.check_name, r.metadata) for r in results]
    daily_after = _rollup_rows(engine, "bi.daily_sensor_agg", "metric_date")
    mine = daily_after[("arduino_1", "temperature", date(2026, 6, 1))]
    assert (mine[3], mine[-1]) == (7, "computed")
    assert math.isclose(mine[0], (sum(computed_02) + sum(late)) / 7, rel_tol=1e-12)
    for key in (("arduino_1", "ph"), ("arduino_2", "temperature")):
        full = (*key, date(2026, 6, 1))
        assert daily_after[full] == daily[full]


def test_import_history_cli_dry_run_writes_nothing(old_db, capsys):
    url, engine = old_db
    assert cli.main(["migrate", "--adopt"]) == 0
    out = capsys.readouterr().out
    for table in SET_ASIDE:
        assert f"set aside {table} -> {table.split('.')[1]}_legacy" in out
    before = checksums(engine, ["bi.hourly_sensor_agg", "bi.daily_sensor_agg", "iot.sensors"])
    assert cli.main(["import-history", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "would_import 12" in out and "arduino_2_co2" in out
    assert (
        checksums(engine, ["bi.hourly_sensor_agg", "bi.daily_sensor_agg", "iot.sensors"]) == before
    )
    assert cli.main(["import-history"]) == 0
    assert "imported 12" in capsys.readouterr().out


def _stat_points(rows: list[tuple]) -> pd.DataFrame:
    """(window end, device, field, {stat: value}) as the old tasks' points."""
    out = []
    for end, device, field, stats in rows:
        for stat, value in stats.items():
            out.append(
                {
                    "_time": pd.Timestamp(end),
                    "_measurement": "sensor_readings_agg",
                    "sensor_tag": device,
                    "_field": field,
                    "stat_type": stat,
                    "_value": float(value),
                }
            )
    return pd.DataFrame(out)


def test_import_history_from_old_influx_task_buckets(httpserver, warehouse_url, engine):
    fake = FakeInflux(httpserver)
    influx = InfluxResource(url=fake.url, token=fake.token, org=fake.org)
    h0 = datetime(2026, 6, 1, tzinfo=UTC)
    full = {"mean": 21.0, "min": 20.0, "max": 23.0, "count": 360}
    hourly = [
        # _time is the window's END (aggregateWindow's default): 01:00 is the 00:00 hour.
        (h0 + timedelta(hours=h + 1), dev, fld, {**full, "mean": 20.5 + h, "max": 22.0 + h})
        for h in range(3)
        for dev, fld in (("arduino_1", "temperature"), ("arduino_2", "temperature"))
    ]
    hourly.append(
        (h0 + timedelta(hours=1), "arduino_1", "ph", {"mean": 6.0, "min": 5.9, "max": 6.2})
    )
    fake.add_points("hydroponics_hourly", _stat_points(hourly))
    daily = [(h0 + timedelta(days=1), "arduino_1", "temperature", {**full, "count": 8640})]
    fake.add_points("hydroponics_daily", _stat_points(daily))

    # Raw holds 01:00-02:00 of arduino_1's temperature: computed first, and it must win.
    _raw_hour(engine, h0 + timedelta(hours=1), "arduino_1", "temperature", [18.0, 19.0])
    assert _materialize(warehouse_url, HOURLY_ASSETS, "2026-06-01-01:00").success
    computed = _rollup_rows(engine, "bi.hourly_sensor_agg", "hour_start")

    report = history.import_influx(
        engine, CATALOGUE, influx, "hydroponics", stop=h0 + timedelta(days=2)
    )
    # 7 windows: the ph one lacks its count (the old 1m/5m tasks wrote none): invalid.
    assert report.counts["bi.hourly_sensor_agg"] == {
        "read": 7,
        "invalid": 1,
        "kept_computed": 1,
        "imported": 5,
    }
    assert report.counts["bi.daily_sensor_agg"] == {"read": 1, "imported": 1}
    queries = [r for r in fake.requests if r.path == "/api/v2/query"]
    assert {json.loads(r.body)["query"].split('"bucket": "')[1].split('"')[0] for r in queries} == {
        "hydroponics_hourly",
        "hydroponics_daily",
    }

    got = _rollup_rows(engine, "bi.hourly_sensor_agg", "hour_start")
    mine = ("arduino_1", "temperature", h0 + timedelta(hours=1))
    assert got[mine] == computed[mine] and got[mine][-1] == "computed"
    for h in range(3):
        for dev in ("arduino_1", "arduino_2"):
            key = (dev, "temperature", h0 + timedelta(hours=h))
            if key == mine:
                continue
            avg, mn, mx, n, sd, median, m2, first, origin = got[key]
            assert (avg, mn, mx, n, origin, median, m2) == (
                20.5 + h,
                20.0,
                22.0 + h,
                360,
                "imported",
                None,
                None,
            )
    assert len(got) == 6
    day = _rollup_rows(engine, "bi.daily_sensor_agg", "metric_date")
    assert day[("arduino_1", "temperature", date(2026, 6, 1))][3] == 8640

    # A missing bucket is a note, not a failure; repeating writes nothing.
    snapshot = checksums(engine, ["bi.hourly_sensor_agg", "bi.daily_sensor_agg"])
    assert history.import_influx(engine, CATALOGUE, influx, "nosuch").notes == [
        "nosuch_hourly: no such bucket, skipped",
        "nosuch_daily: no such bucket, skipped",
    ]
    again = history.import_influx(
        engine, CATALOGUE, influx, "hydroponics", stop=h0 + timedelta(days=2)
    )
    assert again.counts["bi.hourly_sensor_agg"]["imported"] == 0
    assert checksums(engine, ["bi.hourly_sensor_agg", "bi.daily_sensor_agg"]) == snapshot


def test_readme_documents_every_new_command_and_flag(project_root):
    readme = (project_root / "README.md").read_text()
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for command, flags in {
        "migrate": ["--adopt"],
        "import-history": ["--dry-run", "--no-legacy", "--from-influx", "--device-tag",
                           "--measurement"],
        "seed": ["--no-demo-crops"],
    }.items():  # fmt: skip
        options = {o for a in commands[command]._actions for o in a.option_strings}
        assert f"agg-pipeline {command}" in readme
        for flag in flags:
            assert flag in options, (command, flag)
            assert flag in readme, (command, flag)


def test_migration_waiting_on_a_lock_fails_clearly_instead_of_hanging(engine, tmp_path):
    folder = tmp_path / "sql"
    folder.mkdir()
    for m in migrate.discover():
        (folder / m.name).write_text(m.sql)
    edited = folder / "015_imported_history.sql"
    edited.write_text(edited.read_text() + "\n-- edited: re-applied\n")
    with engine.connect() as reader:
        reader.execute(sa.text("SELECT count(*) FROM bi.hourly_sensor_agg"))  # open, holding
        before = checksums(engine, ["ops.schema_migrations"])
        with pytest.raises(migrate.MigrationError) as err:
            migrate.migrate(engine, folder, views=False, lock_timeout_s=0.3)
        reader.rollback()
    message = str(err.value)
    assert "015_imported_history.sql failed" in message
    assert "canceling statement due to lock timeout" in message and "SQLSTATE 55P03" in message
    assert "another session holds a lock" in message
    assert checksums(engine, ["ops.schema_migrations"]) == before
    assert migrate.migrate(engine, folder, views=False) == ["015_imported_history.sql"]
