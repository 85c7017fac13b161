"""Bad input and bad settings: a clear answer naming what was wrong, and nothing changed.

Four classes, one section each: numeric settings out of range (refused at load, naming
the variable), partition keys that are not a partition's own key (refused before any
write), ``agg-pipeline status`` right after a run failed before its checks (never a
crash; what it cannot read is a problem), and the read APIs given the wrong types or
dates (``DashboardError`` / ``PatternQueryError`` naming the parameter).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from agg_pipeline import status as status_mod
from agg_pipeline.config.settings import Settings, SettingsError, env_name, load_settings
from agg_pipeline.definitions import defs
from agg_pipeline.defs import partitions
from agg_pipeline.defs.assets import readings_1m, readings_5m, rollup_hourly
from agg_pipeline.defs.partitions import PartitionKeyError
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.serving import dashboard, patterns
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline_tests import data
from agg_pipeline_tests.faults.checksums import checksums

BIN = Path(sys.executable).parent
DAY = data.DAY0  # Monday 2026-11-02, UTC


def all_tables(engine: sa.Engine) -> list[str]:
    """Every base table the project owns (raw, iot, bi, ops, crop ... not the catalogs)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT table_schema || '.' || table_name FROM information_schema.tables "
                "WHERE table_type = 'BASE TABLE' "
                "AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
            )
        ).scalars()
        return list(rows)


def resources(url: str) -> dict:
    return {"warehouse": WarehouseResource(database_url=url), "influx": InfluxResource()}


# ----------------------------------------------------------------- 1. numeric settings

# (variable, bad value): for every numeric setting, below its range, above it, and the
# non-finite values a float parser accepts.
BAD_SETTINGS = [
    ("AGG_PIPELINE_BACKFILL_PARTITIONS_PER_RUN", "-1"),
    ("AGG_PIPELINE_BACKFILL_PARTITIONS_PER_RUN", "100001"),
    ("AGG_PIPELINE_START_DATE", "1969-12-31"),
    ("AGG_PIPELINE_START_DATE", "2999-01-01"),
    ("AGG_PIPELINE_FUTURE_TOLERANCE_SECONDS", "inf"),
    ("AGG_PIPELINE_FUTURE_TOLERANCE_SECONDS", "nan"),
    ("AGG_PIPELINE_FUTURE_TOLERANCE_SECONDS", "-1"),
    ("AGG_PIPELINE_FUTURE_TOLERANCE_SECONDS", "86401"),
    ("AGG_PIPELINE_MAX_GAP_SECONDS", "1e300"),
    ("AGG_PIPELINE_MAX_GAP_SECONDS", "NaN"),
    ("AGG_PIPELINE_MAX_GAP_SECONDS", "0"),
    ("AGG_PIPELINE_MAX_GAP_SECONDS", "-inf"),
    ("AGG_PIPELINE_CRITICAL_MARGIN_PCT", "-0.5"),
    ("AGG_PIPELINE_CRITICAL_MARGIN_PCT", "1001"),
    ("AGG_PIPELINE_CRITICAL_MARGIN_PCT", "inf"),
    ("AGG_PIPELINE_WORK_MEM", "1kB"),
    ("AGG_PIPELINE_WORK_MEM", "2048GB"),
    ("AGG_PIPELINE_WORK_MEM", "99999999999999999999MB"),
    ("AGG_PIPELINE_MEDIAN_MAX_READINGS", "-1"),
    ("AGG_PIPELINE_MEDIAN_MAX_READINGS", "1000000000001"),
    ("AGG_PIPELINE_PARALLELISM", "0"),
    ("AGG_PIPELINE_PARALLELISM", "17"),
    ("AGG_PIPELINE_CHUNK_DAYS", "0"),
    ("AGG_PIPELINE_CHUNK_DAYS", "32"),
    ("AGG_PIPELINE_LATE_DATA_LOOKBACK_DAYS", "0"),
    ("AGG_PIPELINE_LATE_DATA_LOOKBACK_DAYS", "inf"),
    ("AGG_PIPELINE_LATE_DATA_LOOKBACK_DAYS", "367"),
    ("AGG_PIPELINE_LATE_DATA_SETTLE_MINUTES", "-1"),
    ("AGG_PIPELINE_LATE_DATA_SETTLE_MINUTES", "1441"),
    ("AGG_PIPELINE_LATE_DATA_SETTLE_MINUTES", "nan"),
    ("AGG_PIPELINE_CONSISTENCY_SCAN_MINUTES", "-1"),
    ("AGG_PIPELINE_CONSISTENCY_SCAN_MINUTES", "1441"),
    ("AGG_PIPELINE_CONSISTENCY_SCAN_MINUTES", "inf"),
    ("AGG_PIPELINE_HEALING_INTERVAL_SECONDS", "4"),
    ("AGG_PIPELINE_HEALING_INTERVAL_SECONDS", "3601"),
    ("AGG_PIPELINE_HEALING_INTERVAL_SECONDS", "2.5"),
    ("AGG_PIPELINE_COVERAGE_WARN_PCT", "nan"),
    ("AGG_PIPELINE_COVERAGE_WARN_PCT", "100.01"),
    ("AGG_PIPELINE_COVERAGE_WARN_PCT", "-1"),
    ("AGG_PIPELINE_RETENTION_RAW_DAYS", "0"),
    ("AGG_PIPELINE_RETENTION_RAW_DAYS", "99999999999"),
    ("AGG_PIPELINE_RETENTION_DOWNSAMPLE_DAYS", "0"),
    ("AGG_PIPELINE_RETENTION_DOWNSAMPLE_DAYS", "36501"),
    ("AGG_PIPELINE_RETENTION_HOURLY_DAYS", "0"),
    ("AGG_PIPELINE_RETENTION_HOURLY_DAYS", "36501"),
    ("AGG_PIPELINE_RETENTION_DEVICE_METRICS_DAYS", "-1"),
    ("AGG_PIPELINE_RETENTION_DEVICE_METRICS_DAYS", "36501"),
    ("AGG_PIPELINE_RETENTION_DIAGNOSTIC_SUMMARY_DAYS", "-1"),
    ("AGG_PIPELINE_RETENTION_DIAGNOSTIC_SUMMARY_DAYS", "36501"),
    ("AGG_PIPELINE_RETENTION_PATTERNS_DAYS", "-1"),
    ("AGG_PIPELINE_RETENTION_PATTERNS_DAYS", "36501"),
    ("AGG_PIPELINE_RETENTION_EVENTS_DAYS", "0"),
    ("AGG_PIPELINE_RETENTION_EVENTS_DAYS", "36501"),
    ("AGG_PIPELINE_RETENTION_ANALYTICS_RAW_DAYS", "0"),
    ("AGG_PIPELINE_RETENTION_ANALYTICS_RAW_DAYS", "36501"),
    ("AGG_PIPELINE_RETENTION_ANALYTICS_HOURLY_DAYS", "-1"),
    ("AGG_PIPELINE_RETENTION_ANALYTICS_HOURLY_DAYS", "36501"),
    ("AGG_PIPELINE_RETENTION_RAW_DIAGNOSTICS_DAYS", "0"),
    ("AGG_PIPELINE_RETENTION_RAW_DIAGNOSTICS_DAYS", "36501"),
    ("AGG_PIPELINE_RETENTION_STAGING_HOURS", "0"),
    ("AGG_PIPELINE_RETENTION_STAGING_HOURS", "8761"),
    ("AGG_PIPELINE_LOCK_TIMEOUT_SECONDS", "0"),
    ("AGG_PIPELINE_LOCK_TIMEOUT_SECONDS", "inf"),
    ("AGG_PIPELINE_LOCK_TIMEOUT_SECONDS", "nan"),
    ("AGG_PIPELINE_LOCK_TIMEOUT_SECONDS", "3601"),
    ("AGG_PIPELINE_LOCK_RETRIES", "-1"),
    ("AGG_PIPELINE_LOCK_RETRIES", "1001"),
    ("AGG_PIPELINE_RETENTION_BATCH_ROWS", "99"),
    ("AGG_PIPELINE_RETENTION_BATCH_ROWS", "10000001"),
]

# Each range's own ends are accepted.
EDGE_SETTINGS = [
    ("AGG_PIPELINE_START_DATE", "1970-01-01"),
    ("AGG_PIPELINE_FUTURE_TOLERANCE_SECONDS", "86400"),
    ("AGG_PIPELINE_FUTURE_TOLERANCE_SECONDS", "0"),
    ("AGG_PIPELINE_MAX_GAP_SECONDS", "86400"),
    ("AGG_PIPELINE_CRITICAL_MARGIN_PCT", "1000"),
    ("AGG_PIPELINE_WORK_MEM", "64kB"),
    ("AGG_PIPELINE_WORK_MEM", "2047GB"),
    ("AGG_PIPELINE_MEDIAN_MAX_READINGS", "0"),
    ("AGG_PIPELINE_LATE_DATA_LOOKBACK_DAYS", "366"),
    ("AGG_PIPELINE_LATE_DATA_SETTLE_MINUTES", "1440"),
    ("AGG_PIPELINE_CONSISTENCY_SCAN_MINUTES", "0"),
    ("AGG_PIPELINE_HEALING_INTERVAL_SECONDS", "5"),
    ("AGG_PIPELINE_HEALING_INTERVAL_SECONDS", "3600"),
    ("AGG_PIPELINE_COVERAGE_WARN_PCT", "100"),
    ("AGG_PIPELINE_RETENTION_RAW_DAYS", "36500"),
    ("AGG_PIPELINE_RETENTION_BATCH_ROWS", "10000000"),
]


def _numeric_fields() -> list[str]:
    return [
        name
        for name, info in Settings.model_fields.items()
        if info.annotation in (int, float, date) or name == "work_mem"
    ]


@pytest.mark.parametrize(("var", "value"), BAD_SETTINGS)
def test_out_of_range_setting_fails_at_load_naming_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    # Exactly this variable, first thing after the prefix (never "?" or a field name).
    assert message.startswith(f"invalid setting(s): {var}: "), message
    assert repr(value) in message  # the value given, so the operator sees what was read


@pytest.mark.parametrize(("var", "value"), EDGE_SETTINGS)
def test_range_ends_are_accepted(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    field = var.removeprefix("AGG_PIPELINE_").lower()
    parse = {date: date.fromisoformat, int: int, float: float, str: str}
    expected = parse[Settings.model_fields[field].annotation](value)
    assert getattr(load_settings(), field) == expected


def test_every_numeric_setting_has_a_bad_case_and_finite_bounds():
    """A numeric setting added later without a range (or without a case here) fails."""
    covered = {var for var, _ in BAD_SETTINGS}
    for name in _numeric_fields():
        assert env_name(name) in covered, f"no out-of-range case for {env_name(name)}"
        info = Settings.model_fields[name]
        if info.annotation in (int, float):
            lower = [m for m in info.metadata if hasattr(m, "ge") or hasattr(m, "gt")]
            upper = [m for m in info.metadata if hasattr(m, "le") or hasattr(m, "lt")]
            assert lower and upper, f"{env_name(name)} has no finite range"
        if info.annotation is float:
            assert any(getattr(m, "allow_inf_nan", None) is False for m in info.metadata), name


def test_definitions_refuse_to_load_with_a_bad_setting(warehouse_url, engine):
    """At load, not mid-run: importing the definitions fails naming the variable, and the
    CLI exits 2 before touching the database."""
    before = checksums(engine, all_tables(engine))
    env = {**os.environ, "DATABASE_URL": warehouse_url}
    env["AGG_PIPELINE_FUTURE_TOLERANCE_SECONDS"] = "inf"
    load = subprocess.run(
        [sys.executable, "-c", "import agg_pipeline.definitions"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert load.returncode != 0
    assert "AGG_PIPELINE_FUTURE_TOLERANCE_SECONDS: Input should be a finite number" in load.stderr
    cli = subprocess.run(
        [str(BIN / "agg-pipeline"), "seed", "--days", "0.01"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 2
    assert cli.stderr.startswith(
        "agg-pipeline: invalid setting(s): AGG_PIPELINE_FUTURE_TOLERANCE_SECONDS: "
    )
    assert checksums(engine, all_tables(engine)) == before


# -------------------------------------------------------------- 2. partition keys

HOUR0 = f"{DAY:%Y-%m-%d}-00:00"


@pytest.fixture
def one_hour_done(warehouse_url, engine, dagster_instance):
    """Two hours of readings, the first hour materialized (1m, 5m, hourly)."""
    data.seed(engine, start=DAY, days=2 / 24, devices=2, hz=0.02)
    assert dg.materialize(
        [readings_1m, readings_5m, rollup_hourly],
        instance=dagster_instance,
        resources=resources(warehouse_url),
        partition_key=HOUR0,
    ).success
    return dagster_instance


@pytest.mark.parametrize(
    ("assets", "key", "nearest"),
    [
        # Before the fix: the 01:00 hour was written (the window of '00:30' is 01:00-02:00).
        ([readings_1m], f"{DAY:%Y-%m-%d}-00:30", HOUR0),
        ([readings_1m], f"{DAY:%Y-%m-%d}-00:59", HOUR0),
        ([readings_5m], f"{DAY:%Y-%m-%d}-00:01", HOUR0),
        (
            [readings_1m, readings_5m, rollup_hourly],
            f"{DAY:%Y-%m-%d}-01:15",
            f"{DAY:%Y-%m-%d}-01:00",
        ),
    ],
)
def test_misaligned_partition_key_is_refused_before_any_write(
    warehouse_url, engine, one_hour_done, assets, key, nearest
):
    before = checksums(engine, all_tables(engine))
    with pytest.raises(PartitionKeyError) as err:
        dg.materialize(
            assets, instance=one_hour_done, resources=resources(warehouse_url), partition_key=key
        )
    first = sorted(a.key.to_user_string() for a in assets)[0]
    assert str(err.value) == (
        f"partition key {key!r} is not a partition of {first}: expected YYYY-MM-DD-HH:00 "
        f"(hourly partitions start on the hour, in UTC); did you mean {nearest!r}?"
    )
    assert checksums(engine, all_tables(engine)) == before
    with engine.connect() as conn:
        hour1 = conn.execute(
            sa.text("SELECT count(*) FROM bi.readings_1m WHERE window_start >= :t"),
            {"t": DAY + timedelta(hours=1)},
        ).scalar_one()
    assert hour1 == 0  # the hour after the named one was not written either


NYC = dg.HourlyPartitionsDefinition(start_date="2026-01-01-00:00", timezone="America/New_York")


@pytest.mark.parametrize(
    ("pdef", "key", "message"),
    [
        (
            partitions.daily,
            "2026-11-2",
            "partition key '2026-11-2' is not a partition of a: expected YYYY-MM-DD (daily "
            "partitions are local days, in UTC); did you mean '2026-11-02'?",
        ),
        (
            partitions.weekly,
            "2026-11-05",
            "partition key '2026-11-05' is not a partition of a: expected YYYY-MM-DD (weekly "
            "partitions start on Mondays, in UTC); did you mean '2026-11-02'?",
        ),
        (
            partitions.hourly,
            "2026-11-02 10:00",
            "partition key '2026-11-02 10:00' is not a partition of a: expected "
            "YYYY-MM-DD-HH:00 (hourly partitions start on the hour, in UTC)",
        ),
        (
            NYC,
            "2026-11-01-01:30",
            "partition key '2026-11-01-01:30' is not a partition of a: expected "
            "YYYY-MM-DD-HH:00 (hourly partitions start on the hour, in America/New_York); "
            "did you mean '2026-11-01-01:00'?",
        ),
    ],
)
def test_partition_key_check_names_the_key_and_format(pdef, key, message):
    with pytest.raises(PartitionKeyError) as err:
        partitions.check_partition_key(pdef, key, "a")
    assert str(err.value) == message


def test_partition_key_check_accepts_every_real_key():
    """Including the repeated 01:00 of a DST fall-back day (Dagster's key carries -0500)."""
    fall_back = NYC.get_partition_keys_in_range(
        dg.PartitionKeyRange("2026-11-01-00:00", "2026-11-01-03:00")
    )
    assert "2026-11-01-01:00-0500" in fall_back and len(fall_back) == 5
    week = partitions.hourly.get_partition_keys_in_range(
        dg.PartitionKeyRange(HOUR0, f"{DAY + timedelta(days=6):%Y-%m-%d}-23:00")
    )
    for pdef, keys in [
        (NYC, fall_back),
        (partitions.hourly, week),
        (partitions.daily, ["2026-11-02"]),
    ]:
        for key in keys:
            partitions.check_partition_key(pdef, key, "a")


def test_misaligned_end_of_a_backfill_range_is_refused(warehouse_url, engine, one_hour_done):
    """A single-run backfill gets a key range: both ends are checked."""
    before = checksums(engine, all_tables(engine))
    bad_end = f"{DAY:%Y-%m-%d}-01:30"
    with pytest.raises(PartitionKeyError, match=f"partition key '{bad_end}' is not a partition"):
        dg.materialize(
            [readings_1m],
            instance=one_hour_done,
            resources=resources(warehouse_url),
            tags={
                "dagster/asset_partition_range_start": HOUR0,
                "dagster/asset_partition_range_end": bad_end,
            },
        )
    assert checksums(engine, all_tables(engine)) == before


def test_dagster_cli_refuses_a_misaligned_partition(warehouse_url, engine, tmp_path, project_root):
    """The issue's reproduction: `dagster asset materialize --partition 2026-11-01-10:30`."""
    data.seed(engine, start=DAY, days=2 / 24, devices=1, hz=0.02)
    before = checksums(engine, all_tables(engine))
    home = tmp_path / "dagster_cli_home"
    home.mkdir()
    key = f"{DAY:%Y-%m-%d}-00:30"
    proc = subprocess.run(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "agg_pipeline.definitions",
            "--select",
            "readings_1m",
            "--partition",
            key,
        ],
        env={**os.environ, "DATABASE_URL": warehouse_url, "DAGSTER_HOME": str(home)},
        cwd=project_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"partition key '{key}' is not a partition of readings_1m" in out
    assert f"did you mean '{HOUR0}'?" in out
    assert checksums(engine, all_tables(engine)) == before


# ------------------------------------------------------- 3. status after a failed run


def test_status_after_a_run_failed_before_its_checks(warehouse_url, engine, one_hour_done):
    """The run of the second hour fails (raw table dropped) after planning its checks: the
    latest check records are "planned" only, which crashed status with AttributeError."""
    instance = one_hour_done
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE raw.readings CASCADE"))
        # And one rollup table gone: its row count is unreadable, the rest still shows.
        conn.execute(sa.text("DROP TABLE bi.readings_5m CASCADE"))
    failed = dg.materialize(
        [readings_1m],
        instance=instance,
        resources=resources(warehouse_url),
        partition_key=f"{DAY:%Y-%m-%d}-01:00",
        raise_on_error=False,
    )
    assert not failed.success
    run_id = failed.run_id[:8]
    before = checksums(engine, all_tables(engine))

    now = DAY + timedelta(hours=5)
    result = status_mod.collect(defs, instance, engine, "test", days=1, now=now)
    by_asset = {a.asset: a for a in result.assets}
    assert not result.ok
    one_m = by_asset["readings_1m"]
    assert one_m.unevaluated_checks == [
        f"coverage (run {run_id} FAILURE)",
        f"stats_valid (run {run_id} FAILURE)",
    ]
    assert f"{DAY:%Y-%m-%d}-01:00" in one_m.failed_partitions
    assert one_m.latest_partition == HOUR0 and one_m.rows > 0  # the other parts still read
    assert (
        "readings_1m: checks not evaluated, their run ended first: "
        + ", ".join(one_m.unevaluated_checks)
        in result.problems
    )
    unreadable = [p for p in result.problems if "does not exist" in p]
    assert any(p.startswith("raw readings: ProgrammingError: ") for p in unreadable)
    assert any(
        p.startswith("readings_5m: cannot read rows of bi.readings_5m: ") for p in unreadable
    )
    # rollup_hourly's checks of the first hour passed and are still reported as such.
    assert by_asset["rollup_hourly"].failing_checks == []
    assert by_asset["rollup_hourly"].unevaluated_checks == []
    text = status_mod.render(result)
    assert "not run coverage" in text and "PROBLEMS:" in text

    # The command: exit 1 (problems), never a traceback; JSON carries the same.
    (Path(instance.root_directory) / "dagster.yaml").touch()
    env = {**os.environ, "DATABASE_URL": warehouse_url, "DAGSTER_HOME": instance.root_directory}
    proc = subprocess.run(
        [str(BIN / "agg-pipeline"), "status", "--json", "--days", "30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    assert not report["ok"]
    got = {a["asset"]: a for a in report["assets"]}
    assert got["readings_1m"]["unevaluated_checks"] == one_m.unevaluated_checks
    assert checksums(engine, all_tables(engine)) == before  # status only reads


# -------------------------------------------------------------------- 4. read APIs

NOW = DAY + timedelta(hours=2)
LONG = "x" * 1001

DASHBOARD_CASES = [
    # (function, kwargs, parameter the message must name)
    (dashboard.hourly_for_device, {"device": "dev", "now": "2026-11-02"}, "now"),
    (dashboard.hourly_for_device, {"device": "dev", "now": datetime(2026, 11, 2)}, "now"),
    (dashboard.hourly_for_device, {"device": "dev", "now": DAY.date()}, "now"),
    (
        dashboard.hourly_for_device,
        {"device": "dev", "now": datetime.min.replace(tzinfo=UTC)},
        "now",
    ),
    (dashboard.hourly_for_device, {"device": "dev\x00", "now": NOW}, "device"),
    (dashboard.hourly_for_device, {"device": "", "now": NOW}, "device"),
    (dashboard.hourly_for_device, {"device": LONG, "now": NOW}, "device"),
    (dashboard.hourly_for_device, {"device": "dev", "hours": 745, "now": NOW}, "hours"),
    (dashboard.hourly_for_device, {"device": "dev", "hours": 24.0, "now": NOW}, "hours"),
    (dashboard.hourly_for_device, {"device": "dev", "hours": True, "now": NOW}, "hours"),
    (dashboard.daily_for_device, {"device": "dev", "today": date.min}, "today"),
    (dashboard.daily_for_device, {"device": "dev", "today": "2026-11-02"}, "today"),
    (dashboard.daily_for_device, {"device": "dev", "today": NOW}, "today"),
    (dashboard.daily_for_device, {"device": "dev", "days": 367, "today": DAY.date()}, "days"),
    (dashboard.performance_for_device, {"device": 42, "now": NOW}, "device"),
    (dashboard.diagnostics_summary, {"device": "a\x00b", "today": DAY.date()}, "device"),
    (dashboard.diagnostics_summary, {"today": date.min}, "today"),
    (dashboard.all_devices_performance, {"now": "2026-11-02T00:00:00+00:00"}, "now"),
    (dashboard.ranking, {"metric": "health", "descending": "false", "now": NOW}, "descending"),
    (dashboard.ranking, {"metric": "health", "descending": 0, "now": NOW}, "descending"),
    (dashboard.ranking, {"metric": "hea\x00lth", "now": NOW}, "metric"),
    (dashboard.ranking, {"metric": "health", "limit": 101, "now": NOW}, "limit"),
    (dashboard.ranking_by_health, {"now": datetime(2026, 11, 2, 2)}, "now"),
    (dashboard.ranking_by_efficiency, {"descending": "no", "now": NOW}, "descending"),
]

FIRST = date(2026, 11, 1)
PATTERN_CASES = [
    (patterns.query, {"detector_type": "sequence", "start": "2026-11-02"}, "start"),
    (patterns.query, {"detector_type": "sequence", "start": date.min}, "start"),
    (
        patterns.query,
        {"detector_type": "sequence", "start": datetime(2026, 11, 2, tzinfo=UTC)},
        "start",
    ),
    (patterns.query, {"detector_type": "sequence", "start": FIRST, "end": "2026-11-30"}, "end"),
    (
        patterns.query,
        {"detector_type": "sequence", "start": FIRST, "end": FIRST - timedelta(1)},
        "end",
    ),
    # 367 days, both ends included (the old check let exactly this through).
    (
        patterns.query,
        {"detector_type": "sequence", "start": FIRST, "end": FIRST + timedelta(366)},
        "end",
    ),
    (patterns.query, {"detector_type": "seq\x00uence", "start": FIRST}, "detector_type"),
    (patterns.query, {"detector_type": "sequences", "start": FIRST}, "detector_type"),
    (
        patterns.query,
        {"detector_type": "time_based", "start": FIRST, "entity_id": "light.\x00"},
        "entity_id",
    ),
    (patterns.query, {"detector_type": "sequence", "start": FIRST, "entity_id": 7}, "entity_id"),
    (
        patterns.query,
        {"detector_type": "co_occurrence", "start": FIRST, "device_pair": LONG},
        "device_pair",
    ),
    (
        patterns.query,
        {"detector_type": "room_based", "start": FIRST, "area_id": "kit\x00chen"},
        "area_id",
    ),
    (
        patterns.query,
        {"detector_type": "time_based", "start": FIRST, "area_id": "kitchen"},
        "area_id",
    ),
    (
        patterns.aggregate,
        {
            "detector_type": "time_based",
            "metric": "occurrences",
            "start": FIRST,
            "end": FIRST,
            "how": "median",
        },
        "how",
    ),
    (
        patterns.aggregate,
        {"detector_type": "time_based", "metric": "occ\x00", "start": FIRST, "end": FIRST},
        "metric",
    ),
    (
        patterns.aggregate,
        {"detector_type": "time_based", "metric": "domain", "start": FIRST, "end": FIRST},
        "metric",
    ),
    (
        patterns.aggregate,
        {"detector_type": "time_based", "metric": "occurrences", "start": date.min, "end": FIRST},
        "start",
    ),
    (
        patterns.aggregate,
        {
            "detector_type": "time_based",
            "metric": "occurrences",
            "start": FIRST,
            "end": FIRST + timedelta(366),
        },
        "end",
    ),
]


def _case_id(case) -> str:
    fn, kwargs, param = case
    return f"{fn.__name__}-{param}-{'-'.join(f'{k}={v!r}'[:24] for k, v in kwargs.items())}"


@pytest.fixture
def patterns_and_dashboards(warehouse_url, engine):
    """A warehouse with one day of every pattern type, so a query that slipped through
    would find (and could change) something."""
    patterns.write_batch(engine, patterns.sample_aggregates(12, day=FIRST))
    return engine


@pytest.mark.parametrize("case", DASHBOARD_CASES + PATTERN_CASES, ids=_case_id)
def test_read_api_refuses_bad_parameters_naming_them(patterns_and_dashboards, case):
    engine = patterns_and_dashboards
    fn, kwargs, param = case
    error = (
        dashboard.DashboardError
        if fn.__module__ == dashboard.__name__
        else patterns.PatternQueryError
    )
    assert issubclass(error, ValueError)
    before = checksums(engine, all_tables(engine))
    with pytest.raises(error) as err:
        fn(engine, **kwargs)
    message = str(err.value)
    assert message.split()[0].rstrip(":") == param, message
    assert checksums(engine, all_tables(engine)) == before


def test_read_api_edges_are_accepted(patterns_and_dashboards):
    """The documented maxima themselves are fine (and answer from the data)."""
    engine = patterns_and_dashboards
    last = FIRST + timedelta(days=patterns.MAX_DAYS - 1)
    assert len(patterns.query(engine, "time_based", FIRST, last).rows) == 2
    assert patterns.aggregate(engine, "time_based", "occurrences", FIRST, last, how="count") == {
        "light.room_0": 1.0,
        "light.room_6": 1.0,
    }
    with engine.begin() as conn:  # normally mirrored from the catalogue by its asset
        conn.execute(
            sa.text(
                "INSERT INTO bi.derived_metrics (metric, unit, formula) VALUES ('health', '%', '1')"
            )
        )
    assert (
        dashboard.ranking(engine, "health", hours=744, limit=100, descending=False, now=NOW) == []
    )
    aware = datetime(2026, 11, 2, 3, tzinfo=UTC).astimezone()  # any zone, if aware
    assert dashboard.all_devices_performance(engine, hours=1, now=aware) == []
    assert dashboard.diagnostics_summary(engine, days=366, today=date(1971, 1, 1)) == []
