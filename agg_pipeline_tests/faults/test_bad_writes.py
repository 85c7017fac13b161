"""Faults on the write path: a bad row, a failing statement, a held lock, honest metadata.

- one device name too long for the warehouse's btree indexes must not block the window:
  its rows are rejected as ``bad_device`` and every other device is written exactly;
- only connection loss, deadlocks and serialization failures are retried; any other
  database error fails the run at once, with PostgreSQL's message;
- a run waiting on a lock says what it waits for and who holds it, waits a bounded number
  of times, then either proceeds (lock released) or fails naming the lock;
- metadata: conditions_daily's time span, per-partition figures of a backfill, no late
  rows on a first backfill, condition ranges logged as information.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from agg_pipeline.config.catalogue import load_catalogue
from agg_pipeline.defs.assets import (
    daily_rollup_and_conditions,
    diagnostic_summary_daily,
    readings_1m,
    rollup_hourly,
)
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse import late_data
from agg_pipeline.warehouse.engine import WarehouseResource, is_transient
from agg_pipeline_tests import data, reference
from agg_pipeline_tests.faults.checksums import checksums
from agg_pipeline_tests.warehouse.test_rollups import assert_matches, table

CATALOGUE = load_catalogue("hydroponics")
HOUR = data.DAY0 + timedelta(hours=10)  # 2026-11-02 10:00 UTC
HOUR_KEY = "2026-11-02-10:00"
DAY_KEY = "2026-11-02"
DAY_NUMBER = (date(2026, 11, 2) - date(2000, 1, 1)).days  # the advisory lock's day key
# Random hex does not compress, so it reaches the index at full size (a repeated
# character would be TOAST-compressed below the limit and slip through).
LONG_NAME = "dev-" + secrets.token_hex(1500)  # 3004 bytes
WAREHOUSE_TABLES = [
    "raw.readings",
    "bi.readings_1m",
    "bi.hourly_sensor_agg",
    "bi.hourly_medians",
    "bi.daily_sensor_agg",
    "bi.daily_sensor_conditions",
    "iot.devices",
    "iot.sensors",
]


def materialize(url, assets, instance=None, raise_on_error=True, **kwargs):
    return dg.materialize(
        assets,
        resources={"warehouse": WarehouseResource(database_url=url), "influx": InfluxResource()},
        instance=instance,
        raise_on_error=raise_on_error,
        **kwargs,
    )


def range_tags(first: str, last: str) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": first,
        "dagster/asset_partition_range_end": last,
    }


def logs(instance: dg.DagsterInstance, run_id: str, level: int | None = None) -> list[str]:
    return [
        e.user_message
        for e in instance.all_logs(run_id)
        if e.user_message and (level is None or e.level == level)
    ]


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    failure = next(e for e in result.all_events if e.is_step_failure)
    return str(failure.event_specific_data.error)


def valid_in(engine: sa.Engine, start: datetime, end: datetime):
    raw = reference.load_raw(engine, start, end)
    return raw, reference.valid_readings(raw, CATALOGUE, datetime.now(UTC))


@pytest.fixture
def seeded(engine):
    data.seed(engine, days=1, devices=3)
    return engine


# --------------------------------------------------------------------------------------
# 1. One bad device name
# --------------------------------------------------------------------------------------


def test_too_long_device_name_is_rejected_and_every_other_device_written(
    warehouse_url, seeded, dagster_instance
):
    # The limit is real: the index refuses the name outright (what failed the whole
    # window, "retried" 3 times as if transient, before).
    limit = "exceeds btree version 4 maximum 2704"
    with pytest.raises(sa.exc.OperationalError, match=limit), seeded.begin() as conn:
        conn.execute(sa.text("INSERT INTO iot.devices (device_code) VALUES (:d)"), {"d": LONG_NAME})
    t = HOUR + timedelta(minutes=3)
    bad = (
        [(t + timedelta(seconds=i), LONG_NAME, "ph", 6.0 + i / 100) for i in range(20)]
        + [(t + timedelta(seconds=i), "bell\x07dev", "ec", 1.5) for i in range(3)]
        + [(t + timedelta(seconds=i), "", "humidity", 60.0) for i in range(2)]
    )
    data.insert(seeded, bad)
    before = checksums(seeded, ["raw.readings"])

    result = materialize(
        warehouse_url,
        [readings_1m, rollup_hourly],
        dagster_instance,
        tags=range_tags("2026-11-02-00:00", "2026-11-02-23:00"),
    )
    assert result.success
    assert materialize(
        warehouse_url, [daily_rollup_and_conditions], dagster_instance, partition_key=DAY_KEY
    ).success

    # The normal devices: exactly the pandas reference (which applies the same rule).
    raw, valid = valid_in(seeded, data.DAY0, data.DAY0 + timedelta(days=1))
    assert set(valid["device"]) == {"arduino_001", "arduino_002", "arduino_003"}
    assert_matches(
        table(seeded, "bi.readings_1m", "window_start", mean="mean_value"),
        reference.grouped_stats(valid, valid["time"].dt.floor("1min")),
        median=False,
    )
    assert_matches(
        table(seeded, "bi.hourly_sensor_agg", "hour_start"),
        reference.grouped_stats(valid, valid["time"].dt.floor("1h")),
    )
    assert_matches(
        table(seeded, "bi.daily_sensor_agg", "metric_date"),
        reference.grouped_stats(valid, reference.local_day(valid["time"], "UTC")),
    )

    # The bad rows: counted by reason, named (cut), and nothing lost or registered.
    md = result.asset_materializations_for_node("readings_1m")[0].metadata
    rejected = md["rejected_by_reason"].value
    assert rejected == reference.rejected_by_reason(raw, CATALOGUE, datetime.now(UTC))
    assert rejected["bad_device"] == 25
    assert md["raw_rows_read"].value == len(raw)
    with seeded.connect() as conn:
        written = conn.execute(sa.text("SELECT sum(sample_count) FROM bi.readings_1m")).scalar()
        longest = conn.execute(sa.text("SELECT max(octet_length(device_code)) FROM iot.devices"))
        assert longest.scalar() <= 200
    assert written + md["rejected_total"].value == len(raw)  # every raw row accounted for
    shown = md["bad_devices"].value
    assert shown == {
        LONG_NAME[:40] + "... (3004 bytes)": 20,
        "bell\\x07dev": 3,
        "(empty)": 2,
    }
    assert checksums(seeded, ["raw.readings"]) == before
    warnings = logs(dagster_instance, result.run_id, logging.WARNING)
    assert any("25 rows rejected as bad_device" in m for m in warnings)


def test_too_long_device_name_in_diagnostics_is_rejected(warehouse_url, engine):
    t = HOUR + timedelta(minutes=1)
    rows = [(t, "arduino_001", "drift", "low", 0.9), (t, "arduino_001", "drift", "high", 0.7)]
    rows += [(t + timedelta(seconds=i), LONG_NAME, "drift", "low", 0.5) for i in range(4)]
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO raw.diagnostics (time, device, diagnosis_type, severity, "
                "confidence) VALUES (:t, :d, :k, :s, :c)"
            ),
            [dict(zip("tdksc", r, strict=True)) for r in rows],
        )
    before = checksums(engine, ["raw.diagnostics"])
    result = materialize(warehouse_url, [diagnostic_summary_daily], partition_key=DAY_KEY)
    assert result.success
    md = result.asset_materializations_for_node("diagnostic_summary_daily")[0].metadata
    assert md["rejected_by_reason"].value == {"bad_device": 4}
    assert md["raw_rows_read"].value == 6
    with engine.connect() as conn:
        summary = conn.execute(
            sa.text("SELECT device_code, diagnostics_count FROM bi.v_diagnostic_summary_daily")
        ).all()
    assert [tuple(r) for r in summary] == [("arduino_001", 2)]
    assert checksums(engine, ["raw.diagnostics"]) == before


# --------------------------------------------------------------------------------------
# 2. Which errors are retried
# --------------------------------------------------------------------------------------


def _raise_sqlstate(engine: sa.Engine, code: str) -> BaseException:
    with pytest.raises(sa.exc.DBAPIError) as info, engine.begin() as conn:
        conn.execute(
            sa.text(
                f"DO $$ BEGIN RAISE EXCEPTION 'injected {code}' USING ERRCODE = '{code}'; END $$"
            )
        )
    return info.value


def test_only_connection_loss_deadlock_and_serialization_are_transient(engine):
    # Real errors from the real server. psycopg2 files most of them as OperationalError,
    # which the old rule retried.
    for code in ("40001", "40P01", "57P01"):
        assert is_transient(_raise_sqlstate(engine, code)), code
    for code in ("54000", "53100", "23505", "42501", "57014", "55P03"):
        exc = _raise_sqlstate(engine, code)
        assert not is_transient(exc), code
    # A backend terminated under a connection: the client sees the connection lost.
    with engine.connect() as victim:
        pid = victim.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        with engine.connect() as admin:
            admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        with pytest.raises(sa.exc.DBAPIError) as info:
            victim.execute(sa.text("SELECT 1"))
    assert is_transient(info.value)


def _fail_inserts(engine: sa.Engine, code: str, times: int) -> None:
    """A trigger that fails the first ``times`` inserts into bi.readings_1m with SQLSTATE
    ``code``; the attempts are counted by a sequence (not rolled back with them)."""
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE SEQUENCE public.write_attempts"))
        conn.execute(
            sa.text(
                "CREATE FUNCTION public.fail_insert() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN IF nextval('public.write_attempts') <= "
                f"{times} THEN RAISE EXCEPTION 'injected failure' "
                f"USING ERRCODE = '{code}', DETAIL = 'by the fault test'; END IF; "
                "RETURN NULL; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER fail_insert BEFORE INSERT ON bi.readings_1m "
                "FOR EACH STATEMENT EXECUTE FUNCTION public.fail_insert()"
            )
        )


def _attempts(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT last_value FROM public.write_attempts")).scalar_one()


def test_non_transient_error_fails_at_once_with_postgres_message(warehouse_url, seeded):
    assert materialize(warehouse_url, [readings_1m], partition_key=HOUR_KEY).success
    before = checksums(seeded, WAREHOUSE_TABLES)
    # 54000 program_limit_exceeded: what the too-long index key raised (an OperationalError).
    _fail_inserts(seeded, "54000", times=100)
    result = materialize(warehouse_url, [readings_1m], partition_key=HOUR_KEY, raise_on_error=False)
    assert not result.success
    assert _attempts(seeded) == 1  # not retried
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)
    message = failure_message(result)
    assert "PostgreSQL error 54000: injected failure; detail: by the fault test" in message
    assert checksums(seeded, WAREHOUSE_TABLES) == before  # the old rows are intact


def test_serialization_failure_is_retried_then_succeeds(warehouse_url, seeded):
    _fail_inserts(seeded, "40001", times=1)
    started = time.monotonic()
    result = materialize(warehouse_url, [readings_1m], partition_key=HOUR_KEY)
    assert result.success
    assert _attempts(seeded) == 2
    assert any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)
    assert time.monotonic() - started >= 4  # backed off (5 s +/- 20 %)
    _, valid = valid_in(seeded, HOUR, HOUR + timedelta(hours=1))
    assert_matches(
        table(seeded, "bi.readings_1m", "window_start", mean="mean_value"),
        reference.grouped_stats(valid, valid["time"].dt.floor("1min")),
        median=False,
    )


# --------------------------------------------------------------------------------------
# 3. Held locks
# --------------------------------------------------------------------------------------


@pytest.fixture
def short_locks(monkeypatch):
    from agg_pipeline.config.settings import get_settings

    monkeypatch.setenv("AGG_PIPELINE_LOCK_TIMEOUT_SECONDS", "0.5")
    monkeypatch.setenv("AGG_PIPELINE_LOCK_RETRIES", "3")
    get_settings.cache_clear()


class Holder:
    """Another session holding a lock in an open transaction until released."""

    def __init__(self, engine: sa.Engine, statement: str, params: dict | None = None):
        self.conn = engine.connect()
        self.conn.execute(sa.text("SET application_name = 'lock-holder-test'"))
        self.conn.commit()
        self.trans = self.conn.begin()
        self.conn.execute(sa.text(statement), params or {})
        self.pid = self.conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()

    def release_once_waited_on(self, engine: sa.Engine, seconds: float) -> threading.Thread:
        """Release ``seconds`` after another session starts waiting on a lock (so the
        waiter's lock timeout fires at least once first)."""

        def run() -> None:
            deadline = time.monotonic() + 60
            with engine.connect() as probe:
                while time.monotonic() < deadline and self.trans.is_active:
                    waiting = probe.execute(
                        sa.text("SELECT count(*) FROM pg_locks WHERE NOT granted")
                    ).scalar_one()
                    probe.rollback()
                    if waiting:
                        break
                    time.sleep(0.05)
            time.sleep(seconds)
            self.release()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        if self.trans.is_active:
            self.trans.rollback()
            self.conn.close()


ADVISORY = "SELECT pg_advisory_xact_lock(hashtext('bi.readings_1m'), :d)"


def test_held_advisory_lock_is_logged_and_the_run_proceeds_once_released(
    warehouse_url, seeded, dagster_instance, short_locks
):
    holder = Holder(seeded, ADVISORY, {"d": DAY_NUMBER})
    releaser = holder.release_once_waited_on(seeded, 1.0)
    try:
        result = materialize(warehouse_url, [readings_1m], dagster_instance, partition_key=HOUR_KEY)
    finally:
        releaser.join(timeout=90)
        holder.release()
    assert result.success
    waits = [m for m in logs(dagster_instance, result.run_id, logging.WARNING) if "waited" in m]
    assert waits, "the wait was not logged"
    assert "the advisory lock on (bi.readings_1m, 2026-11-02)" in waits[0]
    assert f"held by pid {holder.pid} (lock-holder-test, idle in transaction" in waits[0]
    assert "waiting again (1/3)" in waits[0]
    _, valid = valid_in(seeded, HOUR, HOUR + timedelta(hours=1))
    assert_matches(
        table(seeded, "bi.readings_1m", "window_start", mean="mean_value"),
        reference.grouped_stats(valid, valid["time"].dt.floor("1min")),
        median=False,
    )


def test_lock_never_released_fails_clearly_after_bounded_waits(
    warehouse_url, seeded, dagster_instance, short_locks
):
    before = checksums(seeded, WAREHOUSE_TABLES)
    holder = Holder(seeded, ADVISORY, {"d": DAY_NUMBER})
    started = time.monotonic()
    try:
        result = materialize(
            warehouse_url,
            [readings_1m],
            dagster_instance,
            partition_key=HOUR_KEY,
            raise_on_error=False,
        )
    finally:
        holder.release()
    elapsed = time.monotonic() - started
    assert not result.success
    message = failure_message(result)
    assert "gave up waiting for a lock: waited 0.5 s for the advisory lock on " in message
    assert "(bi.readings_1m, 2026-11-02)" in message
    assert f"held by pid {holder.pid}" in message
    assert "AGG_PIPELINE_LOCK_RETRIES=3" in message
    waits = [m for m in logs(dagster_instance, result.run_id) if "waiting again" in m]
    assert len(waits) == 3  # then the fourth wait gives up
    assert elapsed < 30  # bounded: 4 x 0.5 s of waiting plus the run itself
    assert checksums(seeded, WAREHOUSE_TABLES) == before


def test_table_lock_held_by_another_session_is_named(
    warehouse_url, seeded, dagster_instance, short_locks
):
    holder = Holder(seeded, "LOCK TABLE bi.readings_1m IN ACCESS EXCLUSIVE MODE")
    releaser = holder.release_once_waited_on(seeded, 1.0)
    try:
        result = materialize(warehouse_url, [readings_1m], dagster_instance, partition_key=HOUR_KEY)
    finally:
        releaser.join(timeout=90)
        holder.release()
    assert result.success
    waits = [m for m in logs(dagster_instance, result.run_id, logging.WARNING) if "waited" in m]
    assert waits, "the wait was not logged"
    assert f"pid {holder.pid} (lock-holder-test" in waits[0]
    assert "AccessExclusiveLock on bi.readings_1m" in waits[0]
    assert "trying the write again (1/3)" in waits[0]
    _, valid = valid_in(seeded, HOUR, HOUR + timedelta(hours=1))
    got = table(seeded, "bi.readings_1m", "window_start", mean="mean_value")
    assert got["sample_count"].sum() == len(valid)


# --------------------------------------------------------------------------------------
# 4. Metadata that says what happened
# --------------------------------------------------------------------------------------


def test_conditions_metadata_has_a_time_span_and_ranges_are_info(
    warehouse_url, seeded, dagster_instance
):
    result = materialize(
        warehouse_url, [daily_rollup_and_conditions], dagster_instance, partition_key=DAY_KEY
    )
    assert result.success
    md = next(
        m.metadata
        for m in result.get_asset_materialization_events()
        if m.asset_key == dg.AssetKey("conditions_daily")
        for m in [m.event_specific_data.materialization]
    )
    assert md["rows_written"].value == 3 * 4  # devices x fields with a range
    _, valid = valid_in(seeded, data.DAY0, data.DAY0 + timedelta(days=1))
    banded = valid[valid["field"].isin(["temperature", "humidity", "ph", "ec"])]
    first, last = banded["time"].min(), banded["time"].max()
    assert md["time_span"].value == f"{first.isoformat()} .. {last.isoformat()}"

    # The ranges in force are information: metadata and INFO log lines, not warnings.
    assert "ph: optimal 5.5..6.5" in md["condition_ranges"].value
    assert "optimal" not in md.get("notes", dg.MetadataValue.md("")).value
    info = logs(dagster_instance, result.run_id, logging.INFO)
    warnings = logs(dagster_instance, result.run_id, logging.WARNING)
    assert any(m.startswith("ph: optimal 5.5..6.5") for m in info)
    assert not any("optimal" in m for m in warnings)


def test_backfill_gives_each_partition_its_own_figures(warehouse_url, seeded, dagster_instance):
    result = materialize(
        warehouse_url,
        [readings_1m],
        dagster_instance,
        tags=range_tags("2026-11-02-09:00", "2026-11-02-11:00"),
    )
    assert result.success
    mats = {m.partition: m.metadata for m in result.asset_materializations_for_node("readings_1m")}
    assert sorted(mats) == ["2026-11-02-09:00", "2026-11-02-10:00", "2026-11-02-11:00"]
    _, valid = valid_in(seeded, HOUR - timedelta(hours=1), HOUR + timedelta(hours=2))
    windows = reference.grouped_stats(valid, valid["time"].dt.floor("1min"))
    per_hour = windows.groupby(pd.to_datetime(windows["bucket"]).dt.floor("1h")).size()
    for key, md in mats.items():
        start = datetime.strptime(key, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC)
        own = valid[(valid["time"] >= start) & (valid["time"] < start + timedelta(hours=1))]
        assert md["partition_rows_written"].value == per_hour[pd.Timestamp(start)]
        assert md["partition_series"].value == own.groupby(["device", "field"]).ngroups
        end = start + timedelta(hours=1)
        assert md["partition_window"].value == f"[{start.isoformat()}, {end.isoformat()})"
        assert md["partition_time_span"].value == (
            f"{own['time'].min().isoformat()} .. {own['time'].max().isoformat()}"
        )
        # the run's totals, labelled as such
        assert md["rows_written"].value == len(windows)
        assert md["totals_of"].value.startswith("the whole run: 3 partitions")


def test_first_backfill_finds_no_late_rows_a_correction_does(
    warehouse_url, seeded, dagster_instance
):
    # The seeded history was loaded long after its hours settled: the late-data log
    # records all of it, though no partition has been materialized yet.
    origin = datetime(2000, 1, 1, tzinfo=UTC)
    late_data.drain(seeded, origin, timedelta(minutes=10))
    with seeded.connect() as conn:
        recorded = conn.execute(
            sa.text("SELECT late_rows FROM raw.readings_late_hours WHERE hour_start = :h"),
            {"h": HOUR},
        ).scalar_one()
    assert recorded > 0

    first = materialize(
        warehouse_url,
        [readings_1m],
        dagster_instance,
        tags=range_tags("2026-11-02-09:00", "2026-11-02-11:00"),
    )
    assert first.success
    for mat in first.asset_materializations_for_node("readings_1m"):
        assert "late_rows_found" not in mat.metadata
        assert mat.metadata["partition_late_rows_found"].value == 0

    # Four readings arrive late for 10:00: the correction of that hour reports them.
    late = [(HOUR + timedelta(minutes=20, seconds=s), "arduino_001", "ph", 6.1) for s in range(4)]
    data.insert(seeded, late)
    late_data.drain(seeded, origin, timedelta(minutes=10))
    again = materialize(warehouse_url, [readings_1m], dagster_instance, partition_key=HOUR_KEY)
    md = again.asset_materializations_for_node("readings_1m")[0].metadata
    # late_rows counts every row that arrived late for the hour, the seeded ones included
    assert md["late_rows_found"].value == recorded + 4
