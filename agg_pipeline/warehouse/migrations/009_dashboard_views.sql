-- Materialized views for dashboards, refreshed every 15 minutes by the `dashboard_views`
-- asset (the old Celery refresh_materialized_views task). Each has a unique index so it is
-- refreshed CONCURRENTLY: readers are never blocked.

-- Latest 1-minute window of every sensor: "latest values for all sensors".
CREATE MATERIALIZED VIEW IF NOT EXISTS bi.sensor_latest AS
SELECT s.id AS sensor_id, dv.device_code, s.field, st.name AS sensor_type, st.unit,
       w.window_start, w.sample_count, w.mean_value, w.min_value, w.max_value,
       w.last_reading_at
FROM iot.sensors AS s
JOIN iot.devices AS dv ON dv.id = s.device_id
JOIN iot.sensor_types AS st ON st.id = s.sensor_type_id
CROSS JOIN LATERAL (
    SELECT * FROM bi.readings_1m AS r
    WHERE r.sensor_id = s.id
    ORDER BY r.window_start DESC
    LIMIT 1
) AS w
WITH NO DATA;
CREATE UNIQUE INDEX IF NOT EXISTS sensor_latest_sensor ON bi.sensor_latest (sensor_id);
