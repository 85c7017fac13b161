-- Exact median of each sensor-hour, computed by readings_1m in the same pass over the raw
-- readings as the 1-minute partials (so the hourly rollup never re-reads raw). The hourly
-- rollup takes a median from here when its reading_count equals the merged count.
CREATE TABLE IF NOT EXISTS bi.hourly_medians (
    sensor_id     integer NOT NULL,  -- iot.sensors.id (no FK: see 011)
    hour_start    timestamptz NOT NULL,
    reading_count bigint NOT NULL,
    median_value  double precision NOT NULL,
    PRIMARY KEY (sensor_id, hour_start)
);
CREATE INDEX IF NOT EXISTS hourly_medians_hour ON bi.hourly_medians (hour_start);
