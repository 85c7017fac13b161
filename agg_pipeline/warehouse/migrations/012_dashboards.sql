-- Dashboard read path: derived device metrics, diagnostics, real-time watermarks, and
-- views / functions any BI tool reading PostgreSQL (Grafana, Metabase, ...) can use.

-- Physical bounds per sensor type (from the catalogue, kept current by the pipeline), so
-- the real-time views apply the same validity rules as the assets.
ALTER TABLE iot.sensor_types ADD COLUMN IF NOT EXISTS min_value double precision;
ALTER TABLE iot.sensor_types ADD COLUMN IF NOT EXISTS max_value double precision;

-- Per table: every window that starts before complete_until was complete when it was
-- materialized. The *_realtime views read the table before it and raw readings after it.
CREATE TABLE IF NOT EXISTS ops.watermarks (
    table_name     text PRIMARY KEY,
    complete_until timestamptz NOT NULL
);

-- Derived hourly metrics per device (device_performance_hourly), long format: one row per
-- (device, hour, metric); the catalogue's definitions are mirrored in bi.derived_metrics.
CREATE TABLE IF NOT EXISTS bi.derived_metrics (
    metric      text PRIMARY KEY,
    unit        text NOT NULL,
    formula     text NOT NULL,
    description text,
    min_value   double precision,
    max_value   double precision
);
CREATE TABLE IF NOT EXISTS bi.device_metrics_hourly (
    device_id   integer NOT NULL REFERENCES iot.devices (id),
    hour_start  timestamptz NOT NULL,
    metric      text NOT NULL,
    value       double precision,
    computed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, hour_start, metric)
);
CREATE INDEX IF NOT EXISTS device_metrics_hourly_hour ON bi.device_metrics_hourly (hour_start);
CREATE INDEX IF NOT EXISTS device_metrics_hourly_metric
    ON bi.device_metrics_hourly (metric, hour_start);

-- Diagnostics, written by the devices' own diagnostic engine (an external source).
CREATE TABLE IF NOT EXISTS raw.diagnostics (
    time           timestamptz NOT NULL,
    device         text NOT NULL,
    diagnosis_type text NOT NULL,
    severity       text NOT NULL,
    confidence     double precision,
    details        jsonb
);
CREATE INDEX IF NOT EXISTS diagnostics_time_brin
    ON raw.diagnostics USING brin (time) WITH (autosummarize = on);

CREATE TABLE IF NOT EXISTS bi.diagnostic_summary_daily (
    device_id         integer NOT NULL REFERENCES iot.devices (id),
    metric_date       date NOT NULL,
    diagnostics_count bigint NOT NULL,
    by_severity       jsonb NOT NULL,
    by_type           jsonb NOT NULL,
    confidence_min    double precision,
    confidence_avg    double precision,
    confidence_max    double precision,
    rejected_count    bigint NOT NULL DEFAULT 0,
    computed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, metric_date)
);
CREATE INDEX IF NOT EXISTS diagnostic_summary_daily_date
    ON bi.diagnostic_summary_daily (metric_date);

-- ---------------------------------------------------------------------------------------
-- Views: rollups with names instead of ids. Dashboards filter them by device / time.
CREATE OR REPLACE VIEW bi.v_hourly_readings AS
SELECT dv.device_code, s.field, st.unit, h.hour_start, h.avg_value, h.min_value,
       h.max_value, h.sample_count, h.stddev_value, h.median_value
FROM bi.hourly_sensor_agg AS h
JOIN iot.sensors AS s ON s.id = h.sensor_id
JOIN iot.devices AS dv ON dv.id = s.device_id
JOIN iot.sensor_types AS st ON st.id = s.sensor_type_id;

CREATE OR REPLACE VIEW bi.v_daily_readings AS
SELECT dv.device_code, s.field, st.unit, a.metric_date, a.avg_value, a.min_value,
       a.max_value, a.sample_count, a.stddev_value, a.median_value,
       a.time_in_optimal_pct, a.time_in_critical_pct
FROM bi.daily_sensor_agg AS a
JOIN iot.sensors AS s ON s.id = a.sensor_id
JOIN iot.devices AS dv ON dv.id = s.device_id
JOIN iot.sensor_types AS st ON st.id = s.sensor_type_id;

CREATE OR REPLACE VIEW bi.v_device_performance_hourly AS
SELECT dv.device_code, m.hour_start, m.metric, m.value, d.unit
FROM bi.device_metrics_hourly AS m
JOIN iot.devices AS dv ON dv.id = m.device_id
LEFT JOIN bi.derived_metrics AS d ON d.metric = m.metric;

CREATE OR REPLACE VIEW bi.v_diagnostic_summary_daily AS
SELECT dv.device_code, d.metric_date, d.diagnostics_count, d.by_severity, d.by_type,
       d.confidence_min, d.confidence_avg, d.confidence_max, d.rejected_count
FROM bi.diagnostic_summary_daily AS d
JOIN iot.devices AS dv ON dv.id = d.device_id;

-- Devices ranked by the mean of a derived metric over the hours since p_since.
CREATE OR REPLACE FUNCTION bi.device_ranking(
    p_metric text, p_since timestamptz, p_limit integer DEFAULT 10, p_descending boolean DEFAULT true
) RETURNS TABLE (rank bigint, device_code text, value double precision, hours bigint)
LANGUAGE sql STABLE AS $$
    SELECT rank() OVER (ORDER BY CASE WHEN p_descending THEN -avg(m.value) ELSE avg(m.value) END),
           dv.device_code, avg(m.value), count(m.value)
    FROM bi.device_metrics_hourly AS m
    JOIN iot.devices AS dv ON dv.id = m.device_id
    WHERE m.metric = p_metric AND m.hour_start >= p_since AND m.value IS NOT NULL
    GROUP BY dv.device_code
    ORDER BY 1, 2
    LIMIT p_limit
$$;
