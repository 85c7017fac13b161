"""Faults of the running system: the database connection cut mid-write, the run worker
killed, two backfills of the same hours at once, a read-only or unreachable database, and
SQL in catalogue names and formulas.

Every case follows one pattern: materialize a window (the *old* data), change raw under it
(late readings, so a re-run has something new to write), take checksums of every table,
inject the fault, and assert that the tables are exactly as before - a window is written
in one transaction, so a failed write leaves the old rows, never half of the new ones.
Then the fault is removed and a re-run must converge: its rows equal the pandas
computation over raw (``reference.py``).

Faults are made deterministic with locks, not timing: a connection of the test holds an
uncommitted row at a key the run will insert (or an advisory lock) that the run's write
waits on, so "mid-write" is a known point - the run's transaction has deleted the window's
old rows and is inserting the new ones - when the fault hits.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from agg_pipeline import cli
from agg_pipeline.config.catalogue import CatalogueError, load_catalogue, parse_catalogue
from agg_pipeline.config.settings import get_settings
from agg_pipeline.defs import common as _common
from agg_pipeline.defs.assets import readings_1m
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse.engine import WarehouseResource, engine_for
from agg_pipeline_tests import data, reference
from agg_pipeline_tests.faults.checksums import checksums
from agg_pipeline_tests.warehouse.test_rollups import HOURLY_ASSETS, assert_matches, table

CATALOGUE = load_catalogue("hydroponics")
# A small window: four hours of three devices (both shards of a 2-way split get devices).
START = data.DAY0
HOURS = 4
END = START + timedelta(hours=HOURS)
FIRST, LAST = "2026-11-02-00:00", "2026-11-02-03:00"
DEVICES = 3
BIN = Path(sys.executable).parent
EPOCH = date(2000, 1, 1)  # the advisory-lock day origin of WarehouseResource
GATE_LOCK = 73_010_099  # advisory lock the staging gate trigger waits on


# --- helpers ---------------------------------------------------------------------------


def tables(engine: sa.Engine) -> list[str]:
    """Every table the project writes (raw, iot, crop, bi, ops), staging tables excepted:
    those are scratch space per run, keyed by the run's batch id."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT table_schema || '.' || table_name FROM information_schema.tables "
                "WHERE table_type = 'BASE TABLE' "
                "AND table_schema IN ('raw', 'iot', 'crop', 'bi', 'ops') "
                "AND table_name NOT LIKE 'staging\\_%' ORDER BY 1"
            )
        ).all()
    return [r[0] for r in rows]


def snapshot(engine: sa.Engine) -> dict[str, tuple[int, str]]:
    return checksums(engine, tables(engine))


def assert_unchanged(engine: sa.Engine, before: dict[str, tuple[int, str]]) -> int:
    """Every table exactly as before; returns the number of rows compared."""
    after = snapshot(engine)
    changed = {t: (before.get(t), after.get(t)) for t in before.keys() | after.keys()}
    changed = {t: v for t, v in changed.items() if v[0] != v[1]}
    assert not changed, f"tables changed by a failed run: {changed}"
    return sum(n for n, _ in after.values())


def materialize(
    url: str | dg.EnvVar,
    first: str = FIRST,
    last: str = LAST,
    instance: dg.DagsterInstance | None = None,
) -> dg.ExecuteInProcessResult:
    """One run of the hourly levels over a range, as a single-run backfill executes it."""
    return dg.materialize(
        HOURLY_ASSETS,
        resources={"warehouse": WarehouseResource(database_url=url), "influx": InfluxResource()},
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        },
        instance=instance,
        raise_on_error=False,
    )


def failures(result: dg.ExecuteInProcessResult) -> str:
    """The text of every failure event of a run (what an operator reads in the UI)."""
    return "\n".join(
        str(e.event_specific_data.error)
        for e in result.all_events
        if e.is_failure and e.event_specific_data
    )


# A minute with no readings of one sensor in the old data, filled by a late reading: the
# re-run inserts a 1m row there, so an uncommitted row of the test at that key makes the
# run's INSERT wait - after its DELETE has removed every old row of the window.
HOLE, HOLE_DEVICE, HOLE_FIELD = START + timedelta(hours=3, minutes=45), "arduino_001", "temperature"


def late_rows() -> list[tuple]:
    """Readings of known devices that move hour 01:00's statistics and fill the hole."""
    t = START + timedelta(hours=1, minutes=20, seconds=3)
    return [
        (t + timedelta(seconds=i), f"arduino_{1 + i % DEVICES:03d}", "temperature", 30.0 + i)
        for i in range(12)
    ] + [(HOLE + timedelta(seconds=10), HOLE_DEVICE, HOLE_FIELD, 22.0)]


def seed_with_hole(engine: sa.Engine) -> None:
    data.seed(engine, days=HOURS / 24, devices=DEVICES, hz=0.05)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "DELETE FROM raw.readings WHERE device = :d AND field = :f "
                "AND time >= :s AND time < :s + interval '1 minute'"
            ),
            {"d": HOLE_DEVICE, "f": HOLE_FIELD, "s": HOLE},
        )


def hold_insert(engine: sa.Engine) -> sa.Connection:
    """A connection whose open transaction inserted the hole's 1m row (a copy of another
    row of that sensor): the run's INSERT of the same key waits for it to end."""
    conn = engine.connect()
    inserted = conn.execute(
        sa.text(
            "INSERT INTO bi.readings_1m "
            "SELECT (jsonb_populate_record(NULL::bi.readings_1m, "
            "to_jsonb(t) || jsonb_build_object('window_start', CAST(:h AS timestamptz)))).* "
            "FROM bi.readings_1m AS t JOIN iot.sensors AS s ON s.id = t.sensor_id "
            "JOIN iot.devices AS d ON d.id = s.device_id "
            "WHERE d.device_code = :d AND s.field = :f LIMIT 1"
        ),
        {"h": HOLE, "d": HOLE_DEVICE, "f": HOLE_FIELD},
    ).rowcount
    assert inserted == 1
    return conn


ROLLUPS = ("bi.readings_1m", "bi.readings_5m", "bi.hourly_sensor_agg")


def assert_converged(engine: sa.Engine, old: dict[str, tuple[int, str]] | None = None) -> int:
    """1m, 5m and hourly rows equal pandas over raw; returns the number of rows checked.

    With ``old`` (the checksums a failed run had to keep), also asserts that the re-run
    did change those tables: the late readings made "unchanged" a real claim.
    """
    if old is not None:
        now = checksums(engine, list(ROLLUPS))
        assert all(now[t] != old[t] for t in ROLLUPS), "the re-run wrote nothing new"
    raw = reference.load_raw(engine, START, END)
    valid = reference.valid_readings(raw, CATALOGUE, datetime.now(UTC))
    checked = 0
    for name, key, freq, mean in (
        ("bi.readings_1m", "window_start", "1min", "mean_value"),
        ("bi.readings_5m", "window_start", "5min", "mean_value"),
        ("bi.hourly_sensor_agg", "hour_start", "1h", "avg_value"),
    ):
        expected = reference.grouped_stats(valid, valid["time"].dt.floor(freq))
        assert_matches(table(engine, name, key, mean=mean), expected, median=mean == "avg_value")
        checked += len(expected)
    with engine.connect() as conn:
        for name, key in (
            ("bi.readings_1m", "window_start"),
            ("bi.readings_5m", "window_start"),
            ("bi.hourly_sensor_agg", "hour_start"),
        ):
            dupes = conn.execute(
                sa.text(
                    f"SELECT count(*) - count(DISTINCT (sensor_id, {key})) FROM {name}"  # noqa: S608
                )
            ).scalar_one()
            assert dupes == 0, f"{name}: {dupes} duplicate rows"
    return checked


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 90.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def blocked_by(holder: sa.Connection) -> list[tuple[int, str]]:
    """(pid, statement) of every backend waiting on a lock ``holder`` holds.

    Read on a connection of its own: inside ``holder``'s open transaction,
    pg_stat_activity would be the snapshot of its first read (stale statements).
    """
    holder_pid = holder.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    with holder.engine.connect() as conn:
        return [
            (r[0], r[1])
            for r in conn.execute(
                sa.text(
                    "SELECT pid, query FROM pg_stat_activity "
                    "WHERE CAST(:h AS int) = ANY(pg_blocking_pids(pid))"
                ),
                {"h": holder_pid},
            ).all()
        ]


def agg_backends(engine: sa.Engine) -> list[int]:
    """Backends the pipeline opened (its engines set application_name)."""
    with engine.connect() as conn:
        return [
            r[0]
            for r in conn.execute(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'agg_pipeline'"
                )
            ).all()
        ]


@pytest.fixture
def old_data(warehouse_url: str, engine: sa.Engine) -> dict[str, tuple[int, str]]:
    """Four hours seeded and materialized (the old rows); then late readings arrive.

    Returns the checksums of every table at that point: what a failed run must leave.
    """
    seed_with_hole(engine)
    assert materialize(warehouse_url).success
    data.insert(engine, late_rows())
    return snapshot(engine)


@pytest.fixture
def insert_holder(engine: sa.Engine) -> Iterator[sa.Connection]:
    conn = hold_insert(engine)
    yield conn
    conn.rollback()
    conn.close()


# --- 1. backend terminated mid-write ---------------------------------------------------


def test_backend_terminated_mid_write_keeps_old_rows_and_rerun_converges(
    warehouse_url, engine, old_data, insert_holder, monkeypatch, record_property
):
    # Retries are the product's answer to a dropped connection (5 s, 10 s, 20 s); with
    # none the first termination fails the run, which is the state under test.
    monkeypatch.setattr(_common, "MAX_RETRIES", 0)
    outcome: dict[str, dg.ExecuteInProcessResult] = {}
    run = threading.Thread(target=lambda: outcome.update(r=materialize(warehouse_url)))
    run.start()
    victims = wait_for(lambda: blocked_by(insert_holder), "the run's write to block")
    # Mid-write: the window's old rows are deleted (in the run's transaction), new ones
    # are being inserted.
    assert any("INSERT INTO bi.readings_1m" in q for _, q in victims), victims
    for pid, _ in victims:
        insert_holder.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    run.join(timeout=120)
    result = outcome["r"]
    assert not result.success
    assert "terminat" in failures(result)  # "terminating connection due to administrator command"
    insert_holder.rollback()

    compared = assert_unchanged(engine, old_data)
    record_property("rows_unchanged", compared)
    assert compared > 10_000

    assert materialize(warehouse_url).success
    checked = assert_converged(engine, old_data)
    record_property("rows_vs_pandas", checked)
    assert checked > 1000


# --- 2. kill -9 of the run worker ------------------------------------------------------


def _install_staging_gate(engine: sa.Engine) -> int:
    """Make the 2nd shard statement that stages rows wait on GATE_LOCK, the 1st commit.

    A statement-level trigger on every staging table: a real run then stops with one
    shard's rows committed to ``ops.staging_*`` and another shard still writing.
    """
    with engine.begin() as conn:
        staging = [
            r[0]
            for r in conn.execute(
                sa.text(
                    "SELECT schemaname || '.' || tablename FROM pg_tables "
                    "WHERE schemaname = 'ops' AND tablename LIKE 'staging\\_%'"
                )
            ).all()
        ]
        conn.execute(sa.text("CREATE SEQUENCE ops.fault_gate_seq"))
        conn.execute(
            sa.text(
                "CREATE FUNCTION ops.fault_gate() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN "
                "  IF EXISTS (SELECT 1 FROM new_rows) "
                "     AND nextval('ops.fault_gate_seq') > 1 THEN "
                f"    PERFORM pg_advisory_xact_lock({GATE_LOCK}); "
                "  END IF; "
                "  RETURN NULL; "
                "END $$"
            )
        )
        for i, name in enumerate(staging):
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER fault_gate_{i} AFTER INSERT ON {name} "
                    "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
                    "EXECUTE FUNCTION ops.fault_gate()"
                )
            )
    return len(staging)


def _staging_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        names = conn.execute(
            sa.text(
                "SELECT schemaname || '.' || tablename FROM pg_tables "
                "WHERE schemaname = 'ops' AND tablename LIKE 'staging\\_%'"
            )
        ).all()
        return sum(
            conn.execute(sa.text(f"SELECT count(*) FROM {n[0]}")).scalar_one()  # noqa: S608
            for n in names
        )


@pytest.mark.parametrize("kill_point", ["staging", "write"])
def test_kill_9_of_the_run_worker_leaves_old_rows_and_rerun_converges(
    kill_point, warehouse_url, engine, tmp_path, monkeypatch, record_property
):
    # Two shards per pass: staging goes through ops.staging_* (sources.py).
    monkeypatch.setenv("AGG_PIPELINE_PARALLELISM", "2")
    get_settings.cache_clear()
    seed_with_hole(engine)
    with engine.connect() as conn:
        shards = conn.execute(
            sa.text("SELECT count(DISTINCT (hashtext(device) & 2147483647) % 2) FROM raw.readings")
        ).scalar_one()
    assert shards == 2, "the seeded devices must fall into both shards"
    assert materialize(warehouse_url).success
    data.insert(engine, late_rows())
    before = snapshot(engine)

    if kill_point == "staging":
        assert _install_staging_gate(engine) > 0
        locker = engine.connect()
        locker.execute(sa.text(f"SELECT pg_advisory_lock({GATE_LOCK})"))
    else:
        locker = hold_insert(engine)
    engine_for(warehouse_url).dispose()  # no pipeline connections but the worker's
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    env = {
        **os.environ,
        "DATABASE_URL": warehouse_url,
        "DAGSTER_HOME": str(home),
        "AGG_PIPELINE_HOME": str(tmp_path / "home"),
        "AGG_PIPELINE_PARALLELISM": "2",
    }
    log = (tmp_path / "worker.log").open("w")  # a file, not a pipe: never fills and blocks
    worker = subprocess.Popen(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "agg_pipeline.definitions",
            "--select",
            "readings_1m,readings_5m,rollup_hourly",
            "--partition-range",
            f"{FIRST}...{LAST}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: SIGKILL reaches every child
    )
    try:
        try:
            victims = wait_for(lambda: blocked_by(locker), f"the worker to block at {kill_point}")
        except AssertionError as exc:
            tail = (tmp_path / "worker.log").read_text()[-3000:]
            raise AssertionError(f"{exc}; worker exit {worker.poll()}, log:\n{tail}") from None
        expected = "INSERT INTO ops.staging_" if kill_point == "staging" else "INSERT INTO bi."
        assert any(expected in q for _, q in victims), victims
        os.killpg(worker.pid, signal.SIGKILL)
        assert worker.wait(timeout=30) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        log.close()
    locker.rollback()
    locker.execute(sa.text("SELECT pg_advisory_unlock_all()"))
    locker.close()
    # The killed worker's backends notice the closed socket and roll back; wait for them.
    wait_for(lambda: not agg_backends(engine), "the killed worker's backends to exit", 30)

    compared = assert_unchanged(engine, before)
    record_property("rows_unchanged", compared)
    assert compared > 10_000
    leftover = _staging_rows(engine)
    if kill_point == "staging":
        assert leftover > 0, "the kill should have left one shard's committed staging rows"
        with engine.begin() as conn:
            conn.execute(sa.text("DROP FUNCTION ops.fault_gate() CASCADE"))
    # The re-run stages under a new batch id: the killed run's rows are never read.
    assert materialize(warehouse_url).success
    checked = assert_converged(engine, before)
    record_property("rows_vs_pandas", checked)
    assert checked > 1000
    assert _staging_rows(engine) == leftover  # left for retention, not consumed


# --- 3. two concurrent backfills of overlapping windows --------------------------------


def test_two_concurrent_overlapping_backfills_end_equal_to_the_reference(
    warehouse_url, engine, old_data, record_property
):
    # Both runs are held at their first write (readings_1m, day 2026-11-02) until both
    # wait, then released together: they really overlap, and the advisory locks of
    # locked_transaction must serialize them.
    gate = engine.connect()
    gate.execute(
        sa.text("SELECT pg_advisory_lock(hashtext('bi.readings_1m'), :d)"),
        {"d": (START.date() - EPOCH).days},
    )
    gate.commit()
    results: dict[str, dg.ExecuteInProcessResult] = {}
    runs = [
        threading.Thread(
            target=lambda k=k, a=a, b=b: results.update({k: materialize(warehouse_url, a, b)})
        )
        for k, a, b in (
            ("early", "2026-11-02-00:00", "2026-11-02-02:00"),
            ("late", "2026-11-02-01:00", "2026-11-02-03:00"),
        )
    ]
    for run in runs:
        run.start()
    waiting = wait_for(lambda: len(blocked_by(gate)) >= 2 and blocked_by(gate), "both runs")
    assert len(waiting) == 2
    record_property("runs_waiting_at_once", len(waiting))
    gate.execute(sa.text("SELECT pg_advisory_unlock_all()"))
    gate.close()
    for run in runs:
        run.join(timeout=120)
    assert results["early"].success and results["late"].success
    checked = assert_converged(engine, old_data)
    record_property("rows_vs_pandas", checked)
    assert checked > 1000


# --- 4. read-only database -------------------------------------------------------------


@pytest.mark.parametrize("how", ["select_only_role", "read_only_database"])
def test_read_only_database_fails_clearly_and_changes_nothing(
    how, pg_server_url, warehouse_url, engine, old_data, record_property
):
    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    database = sa.make_url(warehouse_url).database
    role = f"agg_ro_{uuid.uuid4().hex[:8]}"
    url = warehouse_url
    try:
        if how == "select_only_role":
            with admin.connect() as conn:
                # A password, for servers (TEST_DATABASE_URL) that do not trust local roles.
                conn.execute(sa.text(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{role}'"))
            with engine.begin() as conn:
                for schema in ("raw", "iot", "crop", "bi", "ops"):
                    conn.execute(sa.text(f'GRANT USAGE ON SCHEMA {schema} TO "{role}"'))
                    conn.execute(
                        sa.text(f'GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO "{role}"')
                    )
            url = (
                sa.make_url(warehouse_url)
                .set(username=role, password=role)
                .render_as_string(hide_password=False)
            )
            # Before any write, one message naming the role, a table and what to grant.
            expected = f"role '{role}' may not write the warehouse at"
            named = "no INSERT on bi."
        else:
            with admin.connect() as conn:
                conn.execute(
                    sa.text(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
                )
            engine_for(warehouse_url).dispose()  # new connections get the setting
            expected = "is read-only (transaction_read_only = on"
            named = "runs write the bi, iot, ops schemas"
        result = materialize(url)
        assert not result.success
        message = failures(result)
        assert expected in message and named in message, message[-2000:]
        record_property("rows_unchanged", assert_unchanged(engine, old_data))
    finally:
        if how == "select_only_role":
            engine_for(url).dispose()
            with engine.begin() as conn:
                conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP ROLE "{role}"'))
        else:
            with admin.connect() as conn:
                conn.execute(
                    sa.text(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
                )
            engine_for(warehouse_url).dispose()
        admin.dispose()
    assert materialize(warehouse_url).success
    checked = assert_converged(engine, old_data)
    record_property("rows_vs_pandas", checked)
    assert checked > 1000


# --- 5. unreachable database, password masked ------------------------------------------

PASSWORD = "S3cr3t-pa55w0rd"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_database_never_shows_the_password(
    warehouse_url, engine, dagster_instance, monkeypatch, capsys, caplog, record_property
):
    data.seed(engine, days=HOURS / 24, devices=DEVICES, hz=0.05)
    before = snapshot(engine)
    bad = f"postgresql+psycopg2://agg:{PASSWORD}@127.0.0.1:{_closed_port()}/warehouse"
    monkeypatch.setenv("DATABASE_URL", bad)
    get_settings.cache_clear()

    # A run, configured as definitions.py does (EnvVar, read at run time).
    result = materialize(dg.EnvVar("DATABASE_URL"), instance=dagster_instance)
    assert not result.success
    message = failures(result)
    assert "cannot reach the warehouse" in message and "***" in message
    logs = "\n".join(
        str(e.message) + str(e.dagster_event.event_specific_data if e.dagster_event else "")
        for e in dagster_instance.all_logs(result.run_id)
    )
    run = dagster_instance.get_run_by_id(result.run_id)
    stored = str(run.run_config) + str(run.tags)

    # The operator's commands.
    for argv in (["status"], ["migrate"]):
        code = cli.main(argv)
        assert code != 0
    out = capsys.readouterr()
    assert "agg:***@127.0.0.1" in out.out and "UNREACHABLE" in out.out  # status
    assert "agg-pipeline: cannot reach the warehouse at" in out.err  # migrate
    assert "cannot reach the warehouse" in logs and "agg:***@" in logs

    for where, text in {
        "failure": message,
        "run logs": logs,
        "run record": stored,
        "cli": out.out + out.err,
        "python logs": caplog.text,
    }.items():
        assert PASSWORD not in text, f"password shown in {where}"

    monkeypatch.setenv("DATABASE_URL", warehouse_url)
    get_settings.cache_clear()
    record_property("rows_unchanged", assert_unchanged(engine, before))
    assert materialize(warehouse_url).success
    checked = assert_converged(engine, before)
    record_property("rows_vs_pandas", checked)
    assert checked > 1000


# --- 6. SQL in catalogue names and formulas --------------------------------------------

EVIL = 'x"; DROP TABLE raw.readings; --'
GOOD = (
    resources.files("agg_pipeline.config.catalogues")
    .joinpath("hydroponics.yaml")
    .read_text(encoding="utf-8")
)


FORMULAS = {
    "derived.vpd.formula (statement)": "'temperature.avg); DROP TABLE raw.readings; --'",
    "derived.vpd.formula (string)": "\"'; DROP TABLE raw.readings; --'\"",
    "derived.vpd.formula (call)": "__import__('os').system('true')",
    "derived.vpd.formula (column)": "raw.readings.value",
}


def _evil_catalogue(key: str) -> str:
    """The shipped hydroponics catalogue with one name or formula replaced by SQL."""
    text = GOOD
    replacements = {
        "name": ("name: hydroponics", f"name: '{EVIL}'"),
        "source.table": ("table: raw.readings", f"table: '{EVIL}'"),
        "source.device_column": ("device_column: device", f"device_column: '{EVIL}'"),
        "source.value_column": ("value_column: value", f"value_column: '{EVIL}'"),
        "fields key": ("  humidity:\n", f"  '{EVIL}':\n"),
        "fields.ph.sensor_type": ("sensor_type: PH_SENSOR", f"sensor_type: '{EVIL}'"),
        "derived key": ("  vpd:\n", f"  '{EVIL}':\n"),
    }
    if key in FORMULAS:
        line = re.search(r"^    formula: 0\.6108.*$", text, flags=re.M)
        assert line
        return text.replace(line.group(0), f"    formula: {FORMULAS[key]}", 1)
    old, new = replacements[key]
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    ("key", "named"),
    [
        ("name", "name:"),
        ("source.table", "source.table:"),
        ("source.device_column", "source.device_column:"),
        ("source.value_column", "source.value_column:"),
        ("fields key", "fields."),
        ("fields.ph.sensor_type", "fields.ph.sensor_type:"),
        ("derived key", "derived."),
        ("derived.vpd.formula (statement)", "derived.vpd.formula:"),
        ("derived.vpd.formula (string)", "derived.vpd.formula:"),
        ("derived.vpd.formula (call)", "derived.vpd.formula:"),
        ("derived.vpd.formula (column)", "derived.vpd.formula:"),
    ],
)
def test_sql_in_catalogue_names_and_formulas_fails_at_load_naming_the_key(key, named):
    text = _evil_catalogue(key)
    with pytest.raises(CatalogueError) as err:
        parse_catalogue(text, "evil.yaml")
    message = str(err.value)
    assert message.startswith(f"catalogue 'evil.yaml': {named}"), message


def test_a_run_with_an_injected_catalogue_executes_nothing(
    warehouse_url, engine, old_data, tmp_path, monkeypatch, record_property
):
    path = tmp_path / "evil.yaml"
    path.write_text(_evil_catalogue("source.table"), encoding="utf-8")
    monkeypatch.setenv("AGG_PIPELINE_CATALOGUE", str(path))
    get_settings.cache_clear()
    from agg_pipeline.config.catalogue import get_catalogue

    get_catalogue.cache_clear()
    result = dg.materialize(
        [readings_1m],
        resources={
            "warehouse": WarehouseResource(database_url=warehouse_url),
            "influx": InfluxResource(),
        },
        partition_key="2026-11-02-01:00",
        raise_on_error=False,
    )
    assert not result.success
    assert "source.table:" in failures(result)
    # raw.readings is still there, every row of it
    record_property("rows_unchanged", assert_unchanged(engine, old_data))

    monkeypatch.delenv("AGG_PIPELINE_CATALOGUE")
    get_settings.cache_clear()
    get_catalogue.cache_clear()
    # A device *value* with SQL in it is data: bound, stored and rolled up as it is.
    data.insert(engine, [(START + timedelta(minutes=30), EVIL, "temperature", 21.5)])
    assert materialize(warehouse_url).success
    checked = assert_converged(engine, old_data)
    record_property("rows_vs_pandas", checked)
    assert checked > 1000
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM iot.devices WHERE device_code = :d"), {"d": EVIL}
            ).scalar_one()
            == 1
        )
