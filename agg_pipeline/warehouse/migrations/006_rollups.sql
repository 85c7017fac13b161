-- Hourly / daily / weekly rollups, keeping the old ETL's table names and keys
-- (sensor_id, hour_start | metric_date | week_start) so existing dashboards keep working.
-- stddev_value is the sample standard deviation (NULL for one reading); median_value is
-- exact, computed from raw readings while they are retained (NULL once they are gone).
-- m2 is kept so the level above merges exactly. metric_date / week_start are local dates
-- in the configured time zone; week_start is a Monday.
CREATE TABLE IF NOT EXISTS bi.hourly_sensor_agg (
    sensor_id        integer NOT NULL REFERENCES iot.sensors (id),
    hour_start       timestamptz NOT NULL,
    avg_value        double precision NOT NULL,
    min_value        double precision NOT NULL,
    max_value        double precision NOT NULL,
    sample_count     bigint NOT NULL CHECK (sample_count > 0),
    stddev_value     double precision,
    median_value     double precision,
    m2               double precision NOT NULL,
    first_reading_at timestamptz NOT NULL,
    last_reading_at  timestamptz NOT NULL,
    computed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sensor_id, hour_start)
);
CREATE INDEX IF NOT EXISTS hourly_sensor_agg_hour ON bi.hourly_sensor_agg (hour_start);

CREATE TABLE IF NOT EXISTS bi.daily_sensor_agg (
    sensor_id            integer NOT NULL REFERENCES iot.sensors (id),
    metric_date          date NOT NULL,
    avg_value            double precision NOT NULL,
    min_value            double precision NOT NULL,
    max_value            double precision NOT NULL,
    sample_count         bigint NOT NULL CHECK (sample_count > 0),
    stddev_value         double precision,
    median_value         double precision,
    m2                   double precision NOT NULL,
    first_reading_at     timestamptz NOT NULL,
    last_reading_at      timestamptz NOT NULL,
    time_in_optimal_pct  double precision,
    time_in_critical_pct double precision,
    computed_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sensor_id, metric_date)
);
-- The old ETL's idempotency index, kept by name for scripts that look for it.
CREATE UNIQUE INDEX IF NOT EXISTS uq_daily_sensor_metric
    ON bi.daily_sensor_agg (sensor_id, metric_date);
CREATE INDEX IF NOT EXISTS daily_sensor_agg_date ON bi.daily_sensor_agg (metric_date);

CREATE TABLE IF NOT EXISTS bi.weekly_sensor_agg (
    sensor_id        integer NOT NULL REFERENCES iot.sensors (id),
    week_start       date NOT NULL CHECK (extract(isodow FROM week_start) = 1),
    avg_value        double precision NOT NULL,
    min_value        double precision NOT NULL,
    max_value        double precision NOT NULL,
    sample_count     bigint NOT NULL CHECK (sample_count > 0),
    stddev_value     double precision,
    median_value     double precision,
    m2               double precision NOT NULL,
    first_reading_at timestamptz NOT NULL,
    last_reading_at  timestamptz NOT NULL,
    computed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sensor_id, week_start)
);
CREATE INDEX IF NOT EXISTS weekly_sensor_agg_week ON bi.weekly_sensor_agg (week_start);
