"""simulator.write (binary COPY + INSERT ... SELECT) against the CSV COPY it replaced: the
same rows, including NaN, inf and duplicates, and names past 999 devices."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from agg_pipeline.config.catalogue import load_catalogue
from agg_pipeline.demo import readings as simulator


def _csv_copy(engine: sa.Engine, table: str, spec: simulator.SimulationSpec) -> int:
    """The independent path: generate()'s frames as CSV text, COPY'd as before."""
    total = 0
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            for frame in simulator.generate(load_catalogue("hydroponics"), spec):
                buf = io.StringIO()
                naive = frame.assign(time=frame["time"].dt.tz_localize(None))
                naive.to_csv(buf, header=False, index=False, na_rep="NaN")
                buf.seek(0)
                cur.copy_expert(
                    f"COPY {table} (time, device, field, value) FROM STDIN WITH (FORMAT csv)", buf
                )
                total += len(frame)
        raw.commit()
    finally:
        raw.close()
    return total


@pytest.mark.parametrize(
    ("devices", "hz", "days", "fields"),
    [(3, 0.02, 1.0, None), (1100, 0.002, 2 / 24, ("ph", "light"))],
    ids=["all-fields", "4-digit-devices"],
)
def test_write_equals_csv_copy(engine, devices, hz, days, fields):
    spec = simulator.SimulationSpec(
        start=datetime(2026, 11, 2, 5, tzinfo=UTC), days=days, devices=devices, hz=hz,
        fields=fields, bad_value_rate=2e-3, duplicate_rate=2e-3,
    )  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE raw.readings_csv (LIKE raw.readings)"))
    written = simulator.write(engine, load_catalogue("hydroponics"), spec)
    assert written == _csv_copy(engine, "raw.readings_csv", spec)
    with engine.connect() as conn:
        # value::text: NaN = NaN in SQL, and the text shows every bit of a double.
        cols = "time, device, field, value::text"
        one_way, other_way, stats = (
            conn.execute(sa.text(sql)).scalar()
            for sql in (
                f"SELECT count(*) FROM (SELECT {cols} FROM raw.readings EXCEPT ALL "
                f"SELECT {cols} FROM raw.readings_csv) AS x",
                f"SELECT count(*) FROM (SELECT {cols} FROM raw.readings_csv EXCEPT ALL "
                f"SELECT {cols} FROM raw.readings) AS x",
                "SELECT count(*) FILTER (WHERE value = 'NaN') || '/' || "
                "count(*) FILTER (WHERE value = 'Infinity') || '/' || count(DISTINCT device) "
                "FROM raw.readings",
            )
        )
        log_rows = conn.execute(
            sa.text("SELECT sum(rows_changed) FROM raw.readings_change_log")
        ).scalar()
    assert written > 0 and one_way == 0 and other_way == 0
    nan, inf, named = (int(x) for x in stats.split("/"))
    assert nan > 0 and inf > 0 and named == devices
    assert log_rows == written  # the late-data trigger saw the INSERTs, as it saw COPY
