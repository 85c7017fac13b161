"""sql/ is applied in order, recorded, and safe to repeat."""

from __future__ import annotations

import sqlalchemy as sa

from agg_pipeline import migrate


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
    assert migrate.migrate(engine, folder) == ["004_crop.sql"]
    assert migrate.migrate(engine, folder) == []
    with engine.connect() as conn:
        seeded = conn.execute(sa.text("SELECT count(*) FROM crop.batches")).scalar_one()
    assert seeded == 1  # the demo batch (seed path, in the template) only: 004 adds none
