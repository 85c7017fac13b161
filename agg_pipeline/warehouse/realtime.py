"""Real-time views: materialized windows plus, for the tail, windows computed from raw.

Like TimescaleDB's real-time aggregates, for the 1-minute, hourly and daily levels:

    bi.readings_1m_realtime, bi.hourly_sensor_agg_realtime, bi.daily_sensor_agg_realtime

each returns the table's rows for windows starting before the level's watermark
(``ops.watermarks.complete_until``: every window before it was complete when it was
written) and, from the watermark on, windows computed on the fly from the raw readings
with the same rules as the assets (physical bounds, future tolerance, duplicates counted
once). The seam is one instant: a window is either materialized (starts before it) or
live (its readings are at or after it), so nothing is counted twice or dropped. Readings
that arrive late for a window before the watermark appear once the asset re-runs (the
late-data automation does that within minutes).

The views depend on the catalogue (raw table and columns) and settings (time zone,
partition origin, future tolerance), so they are generated here and installed by
``agg-pipeline migrate``; column ``live`` says which part a row came from.
"""

from __future__ import annotations

import functools
from datetime import datetime, time

import sqlalchemy as sa

from agg_pipeline.config.catalogue import Catalogue
from agg_pipeline.config.settings import Settings
from agg_pipeline.core import hierarchy
from agg_pipeline.warehouse.statements import RawColumns


def _literal(text: str) -> str:
    """A SQL string literal for text we produced ourselves (zone names, timestamps)."""
    if "'" in text or "\\" in text:
        raise ValueError(f"refusing to inline {text!r}")
    return f"'{text}'"


def _live_readings(c: RawColumns, watermark: str, tolerance_s: float) -> str:
    """Valid, de-duplicated raw readings at or after the watermark, per registered sensor."""
    return f"""
        SELECT s.id AS sensor_id, r.{c.time} AS t, avg(r.{c.value}) AS v
        FROM {c.raw_table} AS r
        JOIN iot.devices AS dv ON dv.device_code = r.{c.device}::text
        JOIN iot.sensors AS s ON s.device_id = dv.id AND s.field = r.{c.field}::text
        JOIN iot.sensor_types AS st ON st.id = s.sensor_type_id
        WHERE r.{c.time} >= ({watermark})
          AND r.{c.time} <= now() + make_interval(secs => {float(tolerance_s)!r})
          AND r.{c.value} >= st.min_value AND r.{c.value} <= st.max_value
        GROUP BY 1, 2"""


def _watermark(table: str) -> str:
    return (
        "SELECT coalesce((SELECT complete_until FROM ops.watermarks "
        f"WHERE table_name = {_literal(table)}), '-infinity'::timestamptz)"
    )


_NO_LIVE_READINGS = (
    "SELECT NULL::bigint AS sensor_id, NULL::timestamptz AS t, NULL::float8 AS v WHERE false"
)


def view_statements(catalogue: Catalogue, settings: Settings) -> list[str]:
    src = catalogue.source
    if catalogue.raw_in_postgres:
        c = RawColumns.of(
            src.table, src.time_column, src.device_column, src.field_column, src.value_column
        )
        live = functools.partial(_live_readings, c)
    else:
        # Raw points live in InfluxDB: the views show the materialized windows only.
        def live(watermark: str, tolerance_s: float) -> str:
            return _NO_LIVE_READINGS

    tol = settings.future_tolerance_seconds
    tz = _literal(settings.timezone)
    # Hour bins start on local hours: any local midnight is a valid origin.
    origin = datetime.combine(settings.start_date, time(0), tzinfo=settings.zone)
    origin_sql = f"{_literal(origin.isoformat())}::timestamptz"
    # The levels with a watermark (core/hierarchy.py: their writers advance it).
    w1, wh, wd = (
        _watermark(hierarchy.LEVEL_1M.table),
        _watermark(hierarchy.LEVEL_HOURLY.table),
        _watermark(hierarchy.LEVEL_DAILY.table),
    )
    stats = """count(*) AS sample_count, avg(v) AS {mean}, min(v) AS min_value,
               max(v) AS max_value"""
    return [
        f"""
CREATE OR REPLACE VIEW bi.readings_1m_realtime AS
SELECT m.sensor_id, m.window_start, m.sample_count, m.mean_value, m.min_value,
       m.max_value, m.m2, m.first_reading_at, m.last_reading_at, false AS live
FROM bi.readings_1m AS m
WHERE m.window_start < ({w1})
UNION ALL
SELECT sensor_id, date_bin('1 minute', t, {origin_sql}) AS window_start,
       {stats.format(mean="mean_value")},
       coalesce(var_pop(v) * count(*), 0) AS m2, min(t), max(t), true
FROM ({live(w1, tol)}) AS live
GROUP BY 1, 2""",
        f"""
CREATE OR REPLACE VIEW bi.hourly_sensor_agg_realtime AS
SELECT h.sensor_id, h.hour_start, h.avg_value, h.min_value, h.max_value, h.sample_count,
       h.stddev_value, h.median_value, h.first_reading_at, h.last_reading_at, false AS live
FROM bi.hourly_sensor_agg AS h
WHERE h.hour_start < ({wh})
UNION ALL
SELECT sensor_id, date_bin('1 hour', t, {origin_sql}) AS hour_start, avg(v), min(v), max(v),
       count(*), stddev_samp(v), percentile_cont(0.5) WITHIN GROUP (ORDER BY v), min(t),
       max(t), true
FROM ({live(wh, tol)}) AS live
GROUP BY 1, 2""",
        f"""
CREATE OR REPLACE VIEW bi.daily_sensor_agg_realtime AS
SELECT a.sensor_id, a.metric_date, a.avg_value, a.min_value, a.max_value, a.sample_count,
       a.stddev_value, a.median_value, a.first_reading_at, a.last_reading_at, false AS live
FROM bi.daily_sensor_agg AS a
WHERE a.metric_date < (({wd}) AT TIME ZONE {tz})::date
UNION ALL
SELECT sensor_id, (t AT TIME ZONE {tz})::date AS metric_date, avg(v), min(v), max(v),
       count(*), stddev_samp(v), percentile_cont(0.5) WITHIN GROUP (ORDER BY v), min(t),
       max(t), true
FROM ({live(wd, tol)}) AS live
GROUP BY 1, 2""",
    ]


def install(engine: sa.Engine, catalogue: Catalogue, settings: Settings) -> list[str]:
    """(Re)create the real-time views; return their names."""
    statements = view_statements(catalogue, settings)
    with engine.begin() as conn:
        for sql in statements:
            conn.exec_driver_sql(sql)
    return [s.split("VIEW ", 1)[1].split(" ", 1)[0] for s in statements]


# Each writer calls this after a chunk, in the chunk's transaction.
ADVANCE = """
INSERT INTO ops.watermarks AS w (table_name, complete_until)
VALUES (:table, :until)
ON CONFLICT (table_name) DO UPDATE
SET complete_until = greatest(w.complete_until, EXCLUDED.complete_until)
"""


def advance(
    conn: sa.Connection, table: str, chunk_end: datetime, complete_before: datetime
) -> None:
    """Move ``table``'s watermark to the end of what this write made complete.

    ``complete_before`` is the start of the window that was still open when the data was
    read (a window ending later may lack readings that had not arrived yet).
    """
    conn.execute(sa.text(ADVANCE), {"table": table, "until": min(chunk_end, complete_before)})
