-- 1-minute and 5-minute windows per sensor: mergeable partials. m2 is the sum of squared
-- deviations from the window mean (Welford/Chan's M2), so higher levels merge exactly.
-- A window exists only when it has at least one valid reading.
CREATE TABLE IF NOT EXISTS bi.readings_1m (
    sensor_id        integer NOT NULL,  -- iot.sensors.id (no FK: see 011)
    window_start     timestamptz NOT NULL,
    sample_count     bigint NOT NULL CHECK (sample_count > 0),
    mean_value       double precision NOT NULL,
    min_value        double precision NOT NULL,
    max_value        double precision NOT NULL,
    m2               double precision NOT NULL,
    first_reading_at timestamptz NOT NULL,
    last_reading_at  timestamptz NOT NULL,
    PRIMARY KEY (sensor_id, window_start)
);
CREATE INDEX IF NOT EXISTS readings_1m_window ON bi.readings_1m (window_start);

CREATE TABLE IF NOT EXISTS bi.readings_5m (
    sensor_id        integer NOT NULL,  -- iot.sensors.id (no FK: see 011)
    window_start     timestamptz NOT NULL,
    sample_count     bigint NOT NULL CHECK (sample_count > 0),
    mean_value       double precision NOT NULL,
    min_value        double precision NOT NULL,
    max_value        double precision NOT NULL,
    m2               double precision NOT NULL,
    first_reading_at timestamptz NOT NULL,
    last_reading_at  timestamptz NOT NULL,
    PRIMARY KEY (sensor_id, window_start)
);
CREATE INDEX IF NOT EXISTS readings_5m_window ON bi.readings_5m (window_start);
