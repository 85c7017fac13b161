"""The project's dagster.yaml storage (agg_pipeline/defs/storage.py): a range run stores
the same events, index rows and check results as dagster-postgres' own storage, over far
fewer connections."""

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from agg_pipeline.defs import storage
from agg_pipeline_tests.conftest import create_database, drop_database

DAYS = dg.DailyPartitionsDefinition(start_date="2026-11-01")
KEYS = ["2026-11-02", "2026-11-03", "2026-11-04", "2026-11-05"]


@dg.asset(
    partitions_def=DAYS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=[dg.AssetCheckSpec("positive", asset="days")],
)
def days(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    for key in context.partition_keys:  # per-partition metadata, as materialize_result's
        context.add_asset_metadata({"own": key}, partition_key=key)
    return dg.MaterializeResult(
        metadata={"n": len(context.partition_keys)},
        check_results=[dg.AssetCheckResult(check_name="positive", passed=True)],
    )


@dg.asset(partitions_def=DAYS, deps=[days], backfill_policy=dg.BackfillPolicy.single_run())
def above(context: dg.AssetExecutionContext) -> None:
    pass


def _instance(home: Path, yaml_text: str, url: str, monkeypatch) -> dg.DagsterInstance:
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml_text)
    monkeypatch.setenv("DAGSTER_PG_URL", url)
    return dg.DagsterInstance.from_config(str(home))


def _range_run(instance: dg.DagsterInstance) -> None:
    result = dg.materialize(
        [days, above],
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": KEYS[0],
            "dagster/asset_partition_range_end": KEYS[-1],
        },
    )
    assert result.success


_EVENTS = """
SELECT dagster_event_type, asset_key, partition, step_key, count(*)
FROM event_logs WHERE dagster_event_type IS NOT NULL
  AND dagster_event_type NOT IN ('ENGINE_EVENT', 'LOGS_CAPTURED')
GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
"""
# Data versions and input pointers derive from the run id and event ids: their keys only.
_TAGS = """
SELECT l.dagster_event_type, t.asset_key, t.key,
       CASE WHEN t.key LIKE '%version%' OR t.key LIKE '%pointer%' THEN '' ELSE t.value END
FROM asset_event_tags AS t JOIN event_logs AS l ON l.id = t.event_id ORDER BY 1, 2, 3, 4
"""


def _stored(url: str) -> dict:
    """What the storage holds, without ids and times."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        run_id = conn.execute(sa.text("SELECT run_id FROM runs")).scalar_one()
        out = {
            "events": conn.execute(sa.text(_EVENTS)).all(),
            "tags": conn.execute(sa.text(_TAGS)).all(),
            "asset_keys": conn.execute(
                sa.text(
                    "SELECT asset_key, last_run_id = :r, last_materialization IS NOT NULL "
                    "FROM asset_keys ORDER BY 1"
                ),
                {"r": run_id},
            ).all(),
            "checks": conn.execute(
                sa.text(
                    "SELECT asset_key, check_name, execution_status FROM asset_check_executions "
                    "ORDER BY 1, 2"
                )
            ).all(),
            # Event ids follow the order the run reported them in.
            "in_order": conn.execute(
                sa.text(
                    "SELECT bool_and(ok) FROM (SELECT timestamp >= lag(timestamp, 1, timestamp) "
                    "OVER (ORDER BY id) AS ok FROM event_logs) AS x"
                )
            ).scalar_one(),
        }
    engine.dispose()
    return out


def _sessions(server_url: str, database: str) -> int:
    engine = sa.create_engine(server_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        n = conn.execute(
            sa.text("SELECT sessions FROM pg_stat_database WHERE datname = :d"), {"d": database}
        ).scalar_one()
    engine.dispose()
    return int(n)


@pytest.fixture
def storage_dbs(pg_server_url: str) -> Iterator[tuple[str, str]]:
    names = [f"aggdg_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for name in names:
        create_database(pg_server_url, name)
    yield names[0], names[1]
    for name in names:
        drop_database(pg_server_url, name)


def test_range_run_stores_what_dagster_postgres_stores_over_fewer_connections(
    tmp_path: Path, project_root: Path, pg_server_url: str, storage_dbs, monkeypatch
):
    monkeypatch.delenv(storage.EVENT_BATCH_ENV, raising=False)
    ours_db, stock_db = storage_dbs
    url = sa.make_url(pg_server_url)
    ours_url = url.set(database=ours_db).render_as_string(hide_password=False)
    stock_url = url.set(database=stock_db).render_as_string(hide_password=False)

    # The project's own dagster.yaml (its storage section), on a database of its own.
    shutil.copy(project_root / "dagster.yaml", tmp_path / "project.yaml")
    ours = _instance(
        tmp_path / "ours", (tmp_path / "project.yaml").read_text(), ours_url, monkeypatch
    )
    assert isinstance(ours.get_ref().storage, storage.PooledPostgresStorage)
    assert type(ours.event_log_storage) is storage.PooledPostgresEventLogStorage
    assert os.environ[storage.EVENT_BATCH_ENV] == str(storage.EVENT_BATCH_SIZE)
    before = _sessions(pg_server_url, ours_db)
    _range_run(ours)
    ours_sessions = _sessions(pg_server_url, ours_db) - before
    # The materializations keep their own per-partition metadata.
    records = ours.fetch_materializations(dg.AssetKey("days"), limit=100).records
    assert sorted(r.asset_materialization.metadata["own"].value for r in records) == KEYS
    assert {r.asset_materialization.metadata["n"].value for r in records} == {len(KEYS)}
    ours.dispose()

    stock = _instance(
        tmp_path / "stock",
        "storage:\n  postgres:\n    postgres_url:\n      env: DAGSTER_PG_URL\n",
        stock_url,
        monkeypatch,
    )
    monkeypatch.setenv(storage.EVENT_BATCH_ENV, "0")  # dagster-postgres as it comes
    before = _sessions(pg_server_url, stock_db)
    _range_run(stock)
    stock_sessions = _sessions(pg_server_url, stock_db) - before

    got, want = _stored(ours_url), _stored(stock_url)
    assert got == want
    # Per partition and asset: planned, then materialized (4 partitions x 2 assets).
    planned = [e for e in got["events"] if e[0] == "ASSET_MATERIALIZATION_PLANNED"]
    assert [(a, p) for _, a, p, _, _ in planned] == [
        (f'["{asset}"]', key) for asset in ("above", "days") for key in KEYS
    ]
    # The check ran once for the run (a planned row per partition stays, as Dagster has it).
    assert [c for c in got["checks"] if c[2] != "PLANNED"] == [
        ('["days"]', "positive", "SUCCEEDED")
    ]
    assert got["in_order"]
    stock.dispose()
    # Each asset event of the stock storage connects ~3 times; ours reuses a connection.
    assert stock_sessions > 40
    assert ours_sessions * 4 < stock_sessions, (ours_sessions, stock_sessions)
