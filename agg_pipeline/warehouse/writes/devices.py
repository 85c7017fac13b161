"""Per-device tables: derived hourly metrics and the daily diagnostics summary.

Same write pattern as ``writers``: per chunk, a transaction holding advisory locks on
(table, day), the window's rows deleted and recomputed in one set-based statement.
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from agg_pipeline.core import formulas
from agg_pipeline.core.windows import Window
from agg_pipeline.warehouse import retention, statements, versions
from agg_pipeline.warehouse.writes.readings import WriteContext, WriteReport

# --------------------------------------------------------------------------------------
# Derived metrics
# --------------------------------------------------------------------------------------


def performance_sql(ctx: WriteContext) -> tuple[str, dict]:
    """The INSERT ... SELECT computing every derived metric of the window, and its params.

    Field names, metric names and z values are bound parameters; the only generated text
    is column aliases and the formulas' SQL (numbers and operators from a checked syntax
    tree, see compute/formulas.py).
    """
    fields = list(ctx.catalogue.fields)
    index = {f: i for i, f in enumerate(fields)}
    compiled = {
        name: formulas.compile_sql(m.formula, fields) for name, m in ctx.catalogue.derived.items()
    }
    refs = sorted(set().union(*(c.references for c in compiled.values())))
    anomalies = sorted(set().union(*(c.anomalies for c in compiled.values())))
    params: dict = {}
    pivot_cols = []
    for f, stat in refs:
        params[f"fld_{index[f]}"] = f
        pivot_cols.append(
            f"max(h.{formulas.STATS[stat]}) FILTER (WHERE s.field = :fld_{index[f]}) "
            f"AS {formulas.reference_column(f, stat, index)}"
        )
    anomaly_cols = []
    for k, (f, z) in enumerate(anomalies):
        params[f"fld_{index[f]}"] = f
        params[f"z_{k}"] = z
        anomaly_cols.append(
            f"count(*) FILTER (WHERE s.field = :fld_{index[f]} AND h.stddev_value > 0 "
            f"AND abs(m.mean_value - h.avg_value) > :z_{k} * h.stddev_value) "
            f"AS {formulas.anomaly_column(f, z, index)}"
        )
    values = []
    for k, (name, c) in enumerate(compiled.items()):
        params[f"metric_{k}"] = name
        values.append(f"(CAST(:metric_{k} AS text), {c.sql})")
    anomalies_cte = (
        ", anomalies AS (SELECT s.device_id, h.hour_start, "
        + ", ".join(anomaly_cols)
        + " FROM bi.readings_1m AS m JOIN iot.sensors AS s ON s.id = m.sensor_id "
        "JOIN bi.hourly_sensor_agg AS h ON h.sensor_id = m.sensor_id "
        "AND h.hour_start = date_bin('1 hour', m.window_start, :origin) "
        "WHERE m.window_start >= :start AND m.window_start < :end GROUP BY 1, 2)"
        if anomaly_cols
        else ""
    )
    sql = (
        "INSERT INTO bi.device_metrics_hourly (device_id, hour_start, metric, value) "
        "WITH pivot AS (SELECT s.device_id, h.hour_start, "
        + (", ".join(pivot_cols) or "NULL AS nothing")
        + " FROM bi.hourly_sensor_agg AS h JOIN iot.sensors AS s ON s.id = h.sensor_id "
        "WHERE h.hour_start >= :start AND h.hour_start < :end GROUP BY 1, 2)"
        + anomalies_cte
        + " SELECT p.device_id, p.hour_start, v.metric, v.value FROM pivot AS p "
        + ("LEFT JOIN anomalies AS a USING (device_id, hour_start) " if anomaly_cols else "")
        + "CROSS JOIN LATERAL (VALUES "
        + ", ".join(values)
        + ") AS v (metric, value)"
    )
    return sql, params


_SYNC_METRICS = """
INSERT INTO bi.derived_metrics (metric, unit, formula, description, min_value, max_value)
VALUES (:metric, :unit, :formula, :description, :min, :max)
ON CONFLICT (metric) DO UPDATE SET unit = EXCLUDED.unit, formula = EXCLUDED.formula,
    description = EXCLUDED.description, min_value = EXCLUDED.min_value,
    max_value = EXCLUDED.max_value
"""


_ASSET = "device_performance_hourly"


def write_device_performance(ctx: WriteContext, window: Window) -> WriteReport:
    """Replace ``bi.device_metrics_hourly`` inside ``window`` from the hourly rollups."""
    report = WriteReport("bi.device_metrics_hourly", window)
    if not ctx.catalogue.derived:
        report.notes.append(f"catalogue {ctx.catalogue.name!r} defines no derived metrics")
        with ctx.warehouse.get_engine().begin() as conn:  # nothing to compute: current
            versions.record(conn, {_ASSET: versions.hours_in(window)}, versions.watermark(conn))
        return report.finish()
    sql, params = performance_sql(ctx)
    for chunk in window.chunks(ctx.zone, ctx.settings.chunk_days):
        report.chunks += 1
        with ctx.warehouse.locked_transaction(report.table, chunk.local_days(ctx.zone)) as conn:
            computed_from = versions.watermark(conn)  # before any parent row (versions.py)
            conn.execute(
                sa.text(_SYNC_METRICS),
                [
                    {
                        "metric": name,
                        "unit": m.unit,
                        "formula": m.formula,
                        "description": m.description,
                        "min": m.min,
                        "max": m.max,
                    }
                    for name, m in ctx.catalogue.derived.items()
                ],
            )
            bounds = {"s": chunk.start, "e": chunk.end}
            report.rows_deleted += conn.execute(
                sa.text(
                    "DELETE FROM bi.device_metrics_hourly "
                    "WHERE hour_start >= :s AND hour_start < :e"
                ),
                bounds,
            ).rowcount
            report.rows_written += conn.execute(
                sa.text(sql),
                {**params, "start": chunk.start, "end": chunk.end, "origin": chunk.start},
            ).rowcount
            report.sensors.update(
                r[0]
                for r in conn.execute(
                    sa.text(
                        "SELECT DISTINCT device_id FROM bi.device_metrics_hourly "
                        "WHERE hour_start >= :s AND hour_start < :e"
                    ),
                    bounds,
                )
            )
            report.preview = [
                dict(r)
                for r in conn.execute(
                    sa.text(
                        "SELECT dv.device_code AS device, m.hour_start, m.metric, m.value "
                        "FROM bi.device_metrics_hourly AS m JOIN iot.devices AS dv "
                        "ON dv.id = m.device_id WHERE m.hour_start >= :s AND m.hour_start < :e "
                        "ORDER BY m.hour_start DESC, dv.device_code, m.metric LIMIT 8"
                    ),
                    bounds,
                ).mappings()
            ]
            versions.record(conn, {_ASSET: versions.hours_in(chunk)}, computed_from)
    return report.finish()


def metrics_out_of_bounds(conn: sa.Connection, window: Window) -> dict[str, int]:
    """Per metric, the values in ``window`` outside the metric's declared bounds."""
    rows = conn.execute(
        sa.text(
            "SELECT m.metric, count(*) FROM bi.device_metrics_hourly AS m "
            "JOIN bi.derived_metrics AS d ON d.metric = m.metric "
            "WHERE m.hour_start >= :s AND m.hour_start < :e AND m.value IS NOT NULL "
            "AND (m.value < d.min_value OR m.value > d.max_value) GROUP BY 1"
        ),
        {"s": window.start, "e": window.end},
    ).all()
    return {metric: n for metric, n in rows}


# --------------------------------------------------------------------------------------
# Diagnostics
# --------------------------------------------------------------------------------------

_DIAGNOSTICS = """
INSERT INTO bi.diagnostic_summary_daily (
    device_id, metric_date, diagnostics_count, by_severity, by_type, confidence_min,
    confidence_avg, confidence_max, rejected_count)
WITH d AS (
    SELECT device, (time AT TIME ZONE :tz)::date AS day, diagnosis_type,
           lower(severity) AS severity, confidence,
           lower(severity) = ANY (CAST(:severities AS text[]))
             AND confidence >= 0 AND confidence <= 1 AS ok
    FROM raw.diagnostics
    WHERE time >= :start AND time < :end AND time <= :latest_allowed
),
totals AS (
    SELECT device, day,
           count(*) FILTER (WHERE ok) AS n,
           count(*) FILTER (WHERE NOT ok OR ok IS NULL) AS rejected,
           min(confidence) FILTER (WHERE ok) AS cmin,
           avg(confidence) FILTER (WHERE ok) AS cavg,
           max(confidence) FILTER (WHERE ok) AS cmax
    FROM d GROUP BY 1, 2
),
sev AS (
    SELECT device, day, jsonb_object_agg(severity, n ORDER BY severity) AS by_severity
    FROM (SELECT device, day, severity, count(*) AS n FROM d WHERE ok GROUP BY 1, 2, 3) AS x
    GROUP BY 1, 2
),
typ AS (
    SELECT device, day, jsonb_object_agg(diagnosis_type, n ORDER BY diagnosis_type) AS by_type
    FROM (SELECT device, day, diagnosis_type, count(*) AS n FROM d WHERE ok
          GROUP BY 1, 2, 3) AS x
    GROUP BY 1, 2
)
SELECT dv.id, t.day, t.n, coalesce(sev.by_severity, '{}'::jsonb),
       coalesce(typ.by_type, '{}'::jsonb), t.cmin, t.cavg, t.cmax, t.rejected
FROM totals AS t
JOIN iot.devices AS dv ON dv.device_code = t.device
LEFT JOIN sev USING (device, day)
LEFT JOIN typ USING (device, day)
"""


_DIAGNOSTICS_ASSET = "diagnostic_summary_daily"


def write_diagnostic_summary(ctx: WriteContext, window: Window) -> WriteReport:
    """Replace ``bi.diagnostic_summary_daily`` inside ``window`` from raw.diagnostics."""
    report = WriteReport("bi.diagnostic_summary_daily", window, raw_rows_read=0)
    severities = ctx.settings.diagnostic_severities
    for chunk in window.chunks(ctx.zone, ctx.settings.chunk_days):
        report.chunks += 1
        lo, hi = chunk.local_dates(ctx.zone)
        days = [lo + timedelta(days=i) for i in range((hi - lo).days)]
        with ctx.warehouse.locked_transaction(report.table, days) as conn:
            computed_from = versions.watermark(conn)  # before any raw row (versions.py)
            written = {_DIAGNOSTICS_ASSET: versions.days_in(chunk, ctx.zone)}
            if retention.released_days(conn, "raw.diagnostics", days):
                report.kept_chunks.append(f"{chunk} (raw diagnostics released by retention)")
                versions.record(conn, written, computed_from)  # final: current, never healed
                continue
            latest = ctx.stage_context(conn).latest_allowed
            params = {"start": chunk.start, "end": chunk.end, "latest_allowed": latest}
            devices = (
                conn.execute(
                    sa.text(
                        "SELECT DISTINCT device FROM raw.diagnostics "
                        "WHERE time >= :start AND time < :end"
                    ),
                    params,
                )
                .scalars()
                .all()
            )
            # A device name that cannot be registered (statements.MAX_NAME_BYTES) must not
            # fail every device's summary: its rows are counted as bad_device instead.
            bad = [d for d in devices if statements.is_bad_name(d)]
            if bad:
                for device, n in conn.execute(
                    sa.text(
                        "SELECT device, count(*) FROM raw.diagnostics WHERE time >= :start "
                        "AND time < :end AND device = ANY (CAST(:bad AS text[])) GROUP BY 1"
                    ),
                    {**params, "bad": bad},
                ):
                    report.rejected["bad_device"] += int(n)
                    report.raw_rows_read += int(n)
                    report.bad_devices[statements.shown_name(device)] += int(n)
            report.new_sensors += ctx.warehouse.register_devices(
                [d for d in devices if not statements.is_bad_name(d)]
            )
            report.rows_deleted += conn.execute(
                sa.text(
                    "DELETE FROM bi.diagnostic_summary_daily "
                    "WHERE metric_date >= :lo AND metric_date < :hi"
                ),
                {"lo": lo, "hi": hi},
            ).rowcount
            report.rows_written += conn.execute(
                sa.text(_DIAGNOSTICS),
                {**params, "tz": ctx.settings.timezone, "severities": list(severities)},
            ).rowcount
            read, rejected = conn.execute(
                sa.text(
                    "SELECT coalesce(sum(diagnostics_count + rejected_count), 0), "
                    "coalesce(sum(rejected_count), 0) FROM bi.diagnostic_summary_daily "
                    "WHERE metric_date >= :lo AND metric_date < :hi"
                ),
                {"lo": lo, "hi": hi},
            ).one()
            report.raw_rows_read += int(read)
            if rejected:
                report.rejected["invalid_severity_or_confidence"] += int(rejected)
            report.sensors.update(
                r[0]
                for r in conn.execute(
                    sa.text(
                        "SELECT device_id FROM bi.diagnostic_summary_daily "
                        "WHERE metric_date >= :lo AND metric_date < :hi"
                    ),
                    {"lo": lo, "hi": hi},
                )
            )
            report.preview = [
                dict(r)
                for r in conn.execute(
                    sa.text(
                        "SELECT device_code AS device, metric_date, diagnostics_count, "
                        "by_severity::text AS by_severity, round(confidence_avg::numeric, 3) "
                        "AS confidence_avg FROM bi.v_diagnostic_summary_daily "
                        "WHERE metric_date >= :lo AND metric_date < :hi "
                        "ORDER BY metric_date DESC, device_code LIMIT 8"
                    ),
                    {"lo": lo, "hi": hi},
                ).mappings()
            ]
            versions.record(conn, written, computed_from)
    return report.finish()
