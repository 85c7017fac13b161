"""The shipped migrations are applied in order, recorded, and safe to repeat."""

from __future__ import annotations

import sqlalchemy as sa

from agg_pipeline.config.settings import get_settings
from agg_pipeline.warehouse import migrate


def test_migrations_recorded_and_idempotent(engine, tmp_path, monkeypatch):
    # The test database comes migrated from the template: nothing is pending.
    assert migrate.migrate(engine) == []
    with engine.connect() as conn:
        recorded = (
            conn.execute(sa.text("SELECT filename FROM ops.schema_migrations ORDER BY 1"))
            .scalars()
            .all()
        )
        tables = set(
            conn.execute(
                sa.text(
                    "SELECT table_schema || '.' || table_name FROM information_schema.tables "
                    "WHERE table_schema IN ('raw', 'iot', 'bi', 'crop')"
                )
            ).scalars()
        )
        brin = conn.execute(
            sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = 'readings_time_brin'")
        ).scalar_one()
    assert recorded == [m.name for m in migrate.discover()]
    assert {
        "raw.readings",
        "iot.devices",
        "iot.sensor_types",
        "iot.sensors",
        "crop.growth_stage_definitions",
        "crop.batches",
        "bi.readings_1m",
        "bi.readings_5m",
        "bi.hourly_sensor_agg",
        "bi.daily_sensor_agg",
        "bi.weekly_sensor_agg",
        "bi.daily_sensor_conditions",
    } <= tables
    assert "brin" in brin

    # A changed (still idempotent) file is applied again; an unchanged one is not.
    folder = tmp_path / "sql"
    folder.mkdir()
    for m in migrate.discover():
        (folder / m.name).write_text(m.sql)
    (folder / "004_crop.sql").write_text(migrate.discover()[3].sql + "\n-- edited\n")
    monkeypatch.setenv("AGG_PIPELINE_SQL_DIR", str(folder))  # the override of the folder
    get_settings.cache_clear()
    assert migrate.migrate(engine) == ["004_crop.sql"]
    assert migrate.migrate(engine, folder) == []
    with engine.connect() as conn:
        seeded = conn.execute(sa.text("SELECT count(*) FROM crop.batches")).scalar_one()
    assert seeded == 1  # the demo batch (seed path, in the template) only: 004 adds none


def test_every_migration_ships_in_the_package(project_root):
    """The top-level sql/ only points at the package's migrations: a numbered file left
    there (a merge from before the move) would never be applied by an installed package."""
    stray = sorted(p.name for p in (project_root / "sql").glob("*.sql"))
    assert stray == [], f"move {stray} to agg_pipeline/warehouse/migrations/ (git mv)"
    shipped = [m.name for m in migrate.discover()]
    assert shipped == sorted(shipped) and len(set(n[:3] for n in shipped)) == len(shipped)
