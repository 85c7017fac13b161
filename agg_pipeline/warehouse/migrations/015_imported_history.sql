-- History imported from the systems agg_pipeline replaces (`agg-pipeline import-history`:
-- the old ETL's bi.*_legacy tables, the old InfluxDB tasks' <bucket>_hourly / _daily
-- buckets) lives in the rollup tables with origin = 'imported'. Such a row knows only what
-- the old system kept (mean, min, max, count, maybe a spread): m2, first/last reading and
-- the median may be NULL, and only for imported rows. Rows computed from raw always win:
-- the import never replaces a computed row, a computation from raw replaces an imported
-- one, and an imported row never feeds the level above (see writers.LEVEL_DAILY).
ALTER TABLE bi.hourly_sensor_agg ADD COLUMN IF NOT EXISTS origin text NOT NULL DEFAULT 'computed';
ALTER TABLE bi.daily_sensor_agg ADD COLUMN IF NOT EXISTS origin text NOT NULL DEFAULT 'computed';
ALTER TABLE bi.weekly_sensor_agg ADD COLUMN IF NOT EXISTS origin text NOT NULL DEFAULT 'computed';

ALTER TABLE bi.hourly_sensor_agg ALTER COLUMN m2 DROP NOT NULL,
    ALTER COLUMN first_reading_at DROP NOT NULL, ALTER COLUMN last_reading_at DROP NOT NULL;
ALTER TABLE bi.daily_sensor_agg ALTER COLUMN m2 DROP NOT NULL,
    ALTER COLUMN first_reading_at DROP NOT NULL, ALTER COLUMN last_reading_at DROP NOT NULL;
ALTER TABLE bi.weekly_sensor_agg ALTER COLUMN m2 DROP NOT NULL,
    ALTER COLUMN first_reading_at DROP NOT NULL, ALTER COLUMN last_reading_at DROP NOT NULL;

-- A computed row is still complete; only the two origins exist.
ALTER TABLE bi.hourly_sensor_agg DROP CONSTRAINT IF EXISTS hourly_sensor_agg_origin_check;
ALTER TABLE bi.hourly_sensor_agg ADD CONSTRAINT hourly_sensor_agg_origin_check CHECK (
    origin = 'imported' OR (origin = 'computed' AND m2 IS NOT NULL
    AND first_reading_at IS NOT NULL AND last_reading_at IS NOT NULL));
ALTER TABLE bi.daily_sensor_agg DROP CONSTRAINT IF EXISTS daily_sensor_agg_origin_check;
ALTER TABLE bi.daily_sensor_agg ADD CONSTRAINT daily_sensor_agg_origin_check CHECK (
    origin = 'imported' OR (origin = 'computed' AND m2 IS NOT NULL
    AND first_reading_at IS NOT NULL AND last_reading_at IS NOT NULL));
ALTER TABLE bi.weekly_sensor_agg DROP CONSTRAINT IF EXISTS weekly_sensor_agg_origin_check;
ALTER TABLE bi.weekly_sensor_agg ADD CONSTRAINT weekly_sensor_agg_origin_check CHECK (
    origin = 'imported' OR (origin = 'computed' AND m2 IS NOT NULL
    AND first_reading_at IS NOT NULL AND last_reading_at IS NOT NULL));

-- Dashboards can tell imported history apart (a column added at the end of each view).
CREATE OR REPLACE VIEW bi.v_hourly_readings AS
SELECT dv.device_code, s.field, st.unit, h.hour_start, h.avg_value, h.min_value,
       h.max_value, h.sample_count, h.stddev_value, h.median_value, h.origin
FROM bi.hourly_sensor_agg AS h
JOIN iot.sensors AS s ON s.id = h.sensor_id
JOIN iot.devices AS dv ON dv.id = s.device_id
JOIN iot.sensor_types AS st ON st.id = s.sensor_type_id;

CREATE OR REPLACE VIEW bi.v_daily_readings AS
SELECT dv.device_code, s.field, st.unit, a.metric_date, a.avg_value, a.min_value,
       a.max_value, a.sample_count, a.stddev_value, a.median_value,
       a.time_in_optimal_pct, a.time_in_critical_pct, a.origin
FROM bi.daily_sensor_agg AS a
JOIN iot.sensors AS s ON s.id = a.sensor_id
JOIN iot.devices AS dv ON dv.id = s.device_id
JOIN iot.sensor_types AS st ON st.id = s.sensor_type_id;
