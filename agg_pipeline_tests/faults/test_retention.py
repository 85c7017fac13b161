"""Retention never deletes what no rollup holds (issue 10's two data-loss reproductions).

1. A device whose day was never rolled up (only its hours were) keeps its raw readings, however
   often retention runs, with the defaults' 1m/5m windows already gone.
2. On a range-partitioned raw table, releasing one day drops only that day's partition: every
   other partition keeps every row (the old ``ctid = ANY(...)`` delete emptied them).

Plus: a run over a released day keeps its rollups; every table the project writes has a
retention; retention days from run config; raw events / diagnostics wait for their assets.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from agg_pipeline.config.catalogue import load_catalogue
from agg_pipeline.config.settings import get_settings
from agg_pipeline.defs.assets import daily_rollup_and_conditions, rollup_monthly, rollup_weekly
from agg_pipeline.defs.operations.maintenance import retention_cleanup
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse import realtime
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline_tests import data, reference
from agg_pipeline_tests.faults.checksums import checksums
from agg_pipeline_tests.warehouse.test_monthly import expected_months, monthly_rows
from agg_pipeline_tests.warehouse.test_rollups import assert_matches, run_hours, run_partition

CATALOGUE = load_catalogue("hydroponics")
ROLLUPS = [
    "bi.hourly_sensor_agg",
    "bi.daily_sensor_agg",
    "bi.weekly_sensor_agg",
    "bi.daily_sensor_conditions",
]
DAY = date(2026, 11, 2)  # a Monday


@pytest.fixture(autouse=True)
def _monthly_median_off(monkeypatch) -> None:
    # With the monthly median on, a raw day also waits for its month's rollup: the
    # tests below prove the day and week rules and roll up no months; the month's rule
    # has its own tests (test_a_day_waits_for_its_month...).
    monkeypatch.setenv("AGG_PIPELINE_MONTHLY_MEDIAN", "false")
    get_settings.cache_clear()


def _retention(url: str, instance: dg.DagsterInstance | None = None, **config) -> dict:
    result = retention_cleanup.execute_in_process(
        resources={"warehouse": WarehouseResource(database_url=url), "influx": InfluxResource()},
        run_config={"ops": {"retention_cleanup_op": {"config": config}}},
        instance=instance,
    )
    assert result.success
    return result.output_for_node("retention_cleanup_op")


def _short_retention(monkeypatch) -> None:
    monkeypatch.setenv("AGG_PIPELINE_RETENTION_RAW_DAYS", "1")
    monkeypatch.setenv("AGG_PIPELINE_RETENTION_DOWNSAMPLE_DAYS", "1")
    get_settings.cache_clear()


def _materialize_day(url: str, day: date, weekly: bool = True) -> None:
    first = f"{day.isoformat()}-00:00"
    last = f"{day.isoformat()}-23:00"
    assert run_hours(url, first, last).success
    assert run_partition(url, [daily_rollup_and_conditions], day.isoformat()).success
    if weekly:
        week = day - timedelta(days=day.weekday())
        assert run_partition(url, [rollup_weekly], week.isoformat()).success


def _raw_count(engine: sa.Engine, device: str | None = None) -> int:
    sql = "SELECT count(*) FROM raw.readings" + (" WHERE device = :d" if device else "")
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), {"d": device}).scalar_one()


def _late_device_rows() -> list[tuple]:
    # 360 readings of a new device at 12:00, one every 10 s.
    start = datetime(2026, 11, 2, 12, tzinfo=UTC)
    return [
        (start + timedelta(seconds=10 * i), "late_dev", "temperature", 20.0 + (i % 7) * 0.1)
        for i in range(360)
    ]


def test_a_device_whose_day_was_never_rolled_up_keeps_its_raw_readings(
    warehouse_url, engine, monkeypatch
):
    data.seed(engine, days=1)
    _materialize_day(warehouse_url, DAY)
    data.insert(engine, _late_device_rows())
    # Only late_dev's hour: its 1m, 5m and hourly rows exist, no daily or conditions row.
    assert run_hours(warehouse_url, "2026-11-02-12:00", "2026-11-02-12:00").success
    _short_retention(monkeypatch)
    before = _raw_count(engine)
    rollups_before = checksums(engine, ROLLUPS)

    first, second = _retention(warehouse_url), _retention(warehouse_url)

    assert _raw_count(engine) == before  # not one raw reading went
    assert _raw_count(engine, "late_dev") == 360
    for summary in (first, second):
        assert summary["raw.readings"]["rows"] == 0
        why = summary["raw.readings"]["days_kept"]["2026-11-02"]
        assert "no daily rollup (1 series, e.g. late_dev/temperature)" in why
        assert "no conditions row" in why  # temperature has an optimal band
    assert checksums(engine, ROLLUPS) == rollups_before
    # The 1m windows past their retention did go: the guard does not depend on them.
    assert first["bi.readings_1m"]["rows"] > 0

    # Roll the day (and its week) up again: now every series is held, and the day goes.
    assert run_partition(warehouse_url, [daily_rollup_and_conditions], "2026-11-02").success
    assert run_partition(warehouse_url, [rollup_weekly], "2026-11-02").success
    with engine.connect() as conn:
        daily_late = conn.execute(
            sa.text(
                "SELECT a.sample_count FROM bi.daily_sensor_agg a JOIN iot.sensors s "
                "ON s.id = a.sensor_id JOIN iot.devices d ON d.id = s.device_id "
                "WHERE d.device_code = 'late_dev'"
            )
        ).scalar_one()
    assert daily_late == 360
    with engine.connect() as conn:
        log_sql = sa.text("SELECT count(*) FROM raw.readings_change_log")
        logged = conn.execute(log_sql).scalar_one()
    third = _retention(warehouse_url)
    assert third["raw.readings"]["rows"] == before
    with engine.connect() as conn:  # retention's deletes are not taken for late data
        assert conn.execute(log_sql).scalar_one() == logged
    assert _raw_count(engine) == 0
    with engine.connect() as conn:
        ledger = conn.execute(
            sa.text("SELECT day, rows_deleted, method FROM ops.raw_retention_ledger")
        ).all()
    assert ledger == [(DAY, before, "delete")]


def test_bad_device_readings_do_not_hold_a_day_back(warehouse_url, engine, monkeypatch):
    # Rejected rows (here a device name too long to index) are in no rollup by design:
    # they must not keep a day from being released forever.
    data.seed(engine, days=1)
    data.insert(engine, [(datetime(2026, 11, 2, 7, tzinfo=UTC), "x" * 300, "temperature", 21.0)])
    _materialize_day(warehouse_url, DAY)
    _short_retention(monkeypatch)
    n = _raw_count(engine)
    assert _retention(warehouse_url)["raw.readings"]["rows"] == n
    assert _raw_count(engine) == 0


def test_days_with_stale_counts_or_missing_medians_are_kept(warehouse_url, engine, monkeypatch):
    data.seed(engine, days=1)
    _materialize_day(warehouse_url, DAY)
    _short_retention(monkeypatch)
    with engine.begin() as conn:
        # A late reading the rollups have not seen yet, and a lost hourly median.
        conn.execute(
            sa.text(
                "INSERT INTO raw.readings VALUES ('2026-11-02 15:00:01+00', 'arduino_001', "
                "'humidity', 55.0)"
            )
        )
        conn.execute(
            sa.text(
                "UPDATE bi.hourly_sensor_agg SET median_value = NULL "
                "WHERE hour_start = '2026-11-02 03:00+00' AND sensor_id = "
                "(SELECT min(sensor_id) FROM bi.hourly_sensor_agg)"
            )
        )
    before = _raw_count(engine)
    summary = _retention(warehouse_url)
    assert _raw_count(engine) == before
    why = summary["raw.readings"]["days_kept"]["2026-11-02"]
    assert "daily rollup counts differ from raw (1 series, e.g. arduino_001/humidity)" in why
    assert "hourly rollup counts differ from raw" in why
    assert "hourly median missing (1 series" in why
    assert "week of 2026-11-02: weekly rollup counts differ from its days" not in why


def test_a_run_over_a_released_day_keeps_its_rollups(warehouse_url, engine, monkeypatch):
    data.seed(engine, days=1)
    _materialize_day(warehouse_url, DAY)
    _short_retention(monkeypatch)
    assert _retention(warehouse_url)["raw.readings"]["rows"] > 0
    rollups = checksums(engine, ROLLUPS)
    # A straggler arrives for the released day, then someone backfills the old history.
    data.insert(engine, [(datetime(2026, 11, 2, 9, 30, tzinfo=UTC), "arduino_001", "ph", 6.1)])
    _materialize_day(warehouse_url, DAY)
    assert checksums(engine, ROLLUPS) == rollups  # medians and counts are final
    summary = _retention(warehouse_url)
    assert (
        "arrived after this day's raw data was released"
        in (summary["raw.readings"]["days_kept"]["2026-11-02"])
    )
    assert _raw_count(engine) == 1


def test_a_day_waits_for_its_month_while_the_monthly_median_reads_raw(
    warehouse_url, engine, monkeypatch
):
    monkeypatch.setenv("AGG_PIPELINE_MONTHLY_MEDIAN", "true")
    data.seed(engine, days=1)
    _materialize_day(warehouse_url, DAY)  # hours, day and week: not yet the month
    _short_retention(monkeypatch)
    want = expected_months(engine, "UTC")  # from raw, while it is all there
    before = _raw_count(engine)

    summary = _retention(warehouse_url)

    assert _raw_count(engine) == before  # rollup_monthly still needs it for its median
    why = summary["raw.readings"]["days_kept"]["2026-11-02"]
    assert f"month of 2026-11-01: no monthly rollup ({len(want)} series" in why
    assert "no daily rollup" not in why and "no weekly rollup" not in why

    assert run_partition(warehouse_url, [rollup_monthly], "2026-11-01").success
    assert _retention(warehouse_url)["raw.readings"]["rows"] == before
    assert _raw_count(engine) == 0
    # The month kept exactly what raw said, median included; a run now keeps it.
    assert_matches(monthly_rows(engine), want)
    assert run_partition(warehouse_url, [rollup_monthly], "2026-11-01").success
    assert_matches(monthly_rows(engine), want)


def test_with_the_monthly_median_off_a_day_does_not_wait_for_its_month(
    warehouse_url, engine, monkeypatch
):
    data.seed(engine, days=1)  # AGG_PIPELINE_MONTHLY_MEDIAN=false (the fixture)
    _materialize_day(warehouse_url, DAY)
    _short_retention(monkeypatch)
    before = _raw_count(engine)
    assert _retention(warehouse_url)["raw.readings"]["rows"] == before
    assert _raw_count(engine) == 0
    with engine.connect() as conn:  # the month was never rolled up, and need not be
        assert conn.execute(sa.text("SELECT count(*) FROM bi.monthly_sensor_agg")).scalar() == 0


def _partition_raw_table(engine: sa.Engine, bounds: list[tuple[date, date]]) -> None:
    """Make raw.readings a table range-partitioned on time (as users with partitioned or
    TimescaleDB-like layouts have): one partition per [from, to) plus a default one."""
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE raw.readings RENAME TO readings_plain"))
        conn.execute(
            sa.text(
                "CREATE TABLE raw.readings (LIKE raw.readings_plain INCLUDING DEFAULTS) "
                "PARTITION BY RANGE (time)"
            )
        )
        for lo, hi in bounds:
            conn.execute(
                sa.text(
                    f"CREATE TABLE raw.readings_{lo:%Y%m%d} PARTITION OF raw.readings "
                    f"FOR VALUES FROM ('{lo} 00:00+00') TO ('{hi} 00:00+00')"
                )
            )
        conn.execute(sa.text("CREATE TABLE raw.readings_rest PARTITION OF raw.readings DEFAULT"))
        conn.execute(sa.text("DROP TABLE raw.readings_plain CASCADE"))
    realtime.install(engine, CATALOGUE, get_settings())  # the views over raw, re-created


def _per_partition(engine: sa.Engine) -> dict[str, tuple[int, str]]:
    with engine.connect() as conn:
        names = conn.execute(
            sa.text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'raw.readings'::regclass ORDER BY 1"
            )
        ).scalars()
        names = list(names)
    return checksums(engine, [f"raw.{n}" for n in names])


def test_partitioned_raw_table_loses_only_the_released_partition(
    warehouse_url, engine, monkeypatch
):
    sunday, monday, tuesday = date(2026, 11, 8), date(2026, 11, 9), date(2026, 11, 10)
    _partition_raw_table(engine, [(d, d + timedelta(days=1)) for d in (sunday, monday, tuesday)])
    data.seed(engine, start=datetime(2026, 11, 8, tzinfo=UTC), days=3)
    # Sunday: rolled up at every level, and its week (11-02..11-08) is whole.
    _materialize_day(warehouse_url, sunday)
    # Monday: hours and day, but its week is still open; Tuesday: nothing.
    _materialize_day(warehouse_url, monday, weekly=False)
    before = _per_partition(engine)
    assert before["raw.readings_rest"][0] == 0 and before["raw.readings_20261110"][0] > 0
    _short_retention(monkeypatch)

    summary = _retention(warehouse_url)

    after = _per_partition(engine)
    assert "raw.readings_20261108" not in after  # dropped, not deleted row by row
    assert summary["raw.readings"]["partitions_dropped"] == ["raw.readings_20261108"]
    assert summary["raw.readings"]["rows"] == before["raw.readings_20261108"][0]
    # Every other partition is exactly as it was.
    assert after == {k: v for k, v in before.items() if k != "raw.readings_20261108"}
    kept = summary["raw.readings"]["days_kept"]
    assert "no weekly rollup" in kept["2026-11-09"]
    assert "no daily rollup" in kept["2026-11-10"]
    with engine.connect() as conn:
        ledger = conn.execute(sa.text("SELECT day, method FROM ops.raw_retention_ledger")).all()
    assert ledger == [(sunday, "drop partition")]


def test_partition_spanning_an_unsafe_day_is_kept_and_the_safe_day_deleted_by_range(
    warehouse_url, engine, monkeypatch
):
    # One partition holds Sunday and Monday: only Sunday is safe, so the partition stays
    # and only Sunday's rows go, by time range.
    sunday = date(2026, 11, 8)
    _partition_raw_table(engine, [(sunday, sunday + timedelta(days=2))])
    data.seed(engine, start=datetime(2026, 11, 8, tzinfo=UTC), days=2)
    _materialize_day(warehouse_url, sunday)
    raw = reference.load_raw(
        engine, datetime(2026, 11, 9, tzinfo=UTC), datetime(2026, 11, 10, tzinfo=UTC)
    )
    _short_retention(monkeypatch)
    summary = _retention(warehouse_url)
    assert "partitions_dropped" not in summary["raw.readings"]
    left = reference.load_raw(
        engine, datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 12, tzinfo=UTC)
    )
    pd.testing.assert_frame_equal(
        left.sort_values(list(left.columns)).reset_index(drop=True),
        raw.sort_values(list(raw.columns)).reset_index(drop=True),
    )


def test_run_config_retention_days_like_the_old_cleanup_task(warehouse_url, engine):
    data.seed(engine, days=1)
    _materialize_day(warehouse_url, DAY)
    age = (datetime.now(UTC).date() - DAY).days
    # retention_days = age + 1: nothing is old enough yet.
    dry = _retention(warehouse_url, dry_run=True, retention_days=age + 1)
    assert dry["raw.readings"]["rows"] == 0
    # retention_days = 1: raw goes (dry run: counted only); hourly keeps 2 x 1 days.
    n = _raw_count(engine)
    dry = _retention(warehouse_url, dry_run=True, retention_days=1, downsample_days=1)
    assert dry["raw.readings"]["rows"] == n
    assert dry["raw.readings"]["cutoff"] == str(datetime.now(UTC).date() - timedelta(days=1))
    assert dry["bi.hourly_sensor_agg"]["cutoff"].startswith(
        str(datetime.now(UTC).date() - timedelta(days=2))
    )
    assert _raw_count(engine) == n  # a dry run deletes nothing


def test_bad_run_config_fails_naming_the_key(warehouse_url):
    with pytest.raises(dg.DagsterInvalidConfigError, match="raw_days"):
        retention_cleanup.execute_in_process(
            resources={
                "warehouse": WarehouseResource(database_url=warehouse_url),
                "influx": InfluxResource(),
            },
            run_config={"ops": {"retention_cleanup_op": {"config": {"raw_days": "soon"}}}},
        )


def test_every_written_table_has_a_retention(warehouse_url, engine, dagster_instance):
    old = datetime.now(UTC) - timedelta(days=400)
    recent = datetime.now(UTC) - timedelta(days=1)
    old_day, recent_day = old.date(), recent.date()
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO iot.devices (device_code) VALUES ('d1')"))
        dev = conn.execute(sa.text("SELECT id FROM iot.devices WHERE device_code = 'd1'"))
        dev = dev.scalar_one()
        for t in (old, recent):
            conn.execute(
                sa.text(
                    "INSERT INTO bi.device_metrics_hourly (device_id, hour_start, metric, value) "
                    "VALUES (:d, date_trunc('hour', CAST(:t AS timestamptz)), 'm', 1)"
                ),
                {"d": dev, "t": t},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO bi.diagnostic_summary_daily (device_id, metric_date, "
                    "diagnostics_count, by_severity, by_type) VALUES (:d, :day, 1, '{}', '{}')"
                ),
                {"d": dev, "day": t.date()},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO bi.pattern_duration_daily VALUES (:day, 'light.a', 1, 1, 1, 1, "
                    "0, 1)"
                ),
                {"day": t.date()},
            )
            for table, cols in (
                ("raw.events", "(time, entity_id, domain, state)"),
                ("raw.diagnostics", "(time, device, diagnosis_type, severity)"),
            ):
                values = (
                    "(:t, 'light.a', 'light', 'on')"
                    if table == "raw.events"
                    else ("(:t, 'd1', 'leak', 'low')")
                )
                conn.execute(sa.text(f"INSERT INTO {table} {cols} VALUES {values}"), {"t": t})
        # A staging table left by a killed run: one old row, one fresh.
        conn.execute(sa.text("CREATE TABLE ops.staging_killed (staged_at timestamptz, batch int)"))
        conn.execute(
            sa.text(
                "INSERT INTO ops.staging_killed VALUES (now() - interval '2 days', 1), (now(), 2)"
            )
        )
    # The diagnostics summary ran for the old day; no pattern asset did.
    dagster_instance.report_runless_asset_event(
        dg.AssetMaterialization("diagnostic_summary_daily", partition=old_day.isoformat())
    )

    summary = _retention(warehouse_url, instance=dagster_instance)

    with engine.connect() as conn:

        def days(sql: str) -> list[date]:
            return [r[0] for r in conn.execute(sa.text(sql))]

        assert days("SELECT hour_start::date FROM bi.device_metrics_hourly") == [recent_day]
        # Diagnostic summaries are daily aggregates: kept forever by default.
        assert sorted(days("SELECT metric_date FROM bi.diagnostic_summary_daily")) == [
            old_day,
            recent_day,
        ]
        assert days("SELECT day FROM bi.pattern_duration_daily") == [recent_day]
        # raw.events: the pattern assets never ran for the old day, so it stays.
        assert sorted(days("SELECT time::date FROM raw.events")) == [old_day, recent_day]
        assert days("SELECT time::date FROM raw.diagnostics") == [recent_day]
        assert days("SELECT batch FROM ops.staging_killed") == [2]
    assert "pattern_time_based_daily" in summary["raw.events"]["days_kept"][str(old_day)]
    assert summary["bi.diagnostic_summary_daily"]["skipped"].startswith("kept forever")


def test_a_reading_written_while_retention_runs_is_never_deleted(
    warehouse_url, engine, monkeypatch
):
    data.seed(engine, days=1)
    _materialize_day(warehouse_url, DAY)
    _short_retention(monkeypatch)
    # A writer's transaction is open across the whole retention run, and commits after it.
    writer = engine.connect()
    writer.execute(
        sa.text(
            "INSERT INTO raw.readings VALUES ('2026-11-02 08:00:03+00', 'arduino_001', 'ph', 6.0)"
        )
    )
    try:
        summary = _retention(warehouse_url)
    finally:
        writer.commit()
        writer.close()
    assert summary["raw.readings"]["rows"] > 0  # the day was released...
    with engine.connect() as conn:  # ...and the reading it could not see is still there
        left = conn.execute(sa.text("SELECT device, field, value FROM raw.readings")).all()
    assert left == [("arduino_001", "ph", 6.0)]
