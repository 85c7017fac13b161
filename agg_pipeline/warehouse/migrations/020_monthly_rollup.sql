-- Monthly rollups of readings (issue 13 §3): per sensor and local calendar month, merged
-- exactly from bi.daily_sensor_agg (count, mean, M2, min, max); the median is exact,
-- from raw, while raw is retained (AGG_PIPELINE_MONTHLY_MEDIAN). month_start is the
-- local date of the 1st. `origin` as in 015: only computed rows exist at this level, the
-- column keeps the writers' "previous median" lookup the same for every level.
CREATE TABLE IF NOT EXISTS bi.monthly_sensor_agg (
    sensor_id        integer NOT NULL REFERENCES iot.sensors (id),
    month_start      date NOT NULL CHECK (extract(day FROM month_start) = 1),
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
    origin           text NOT NULL DEFAULT 'computed' CHECK (origin = 'computed'),
    PRIMARY KEY (sensor_id, month_start)
);
CREATE INDEX IF NOT EXISTS monthly_sensor_agg_month ON bi.monthly_sensor_agg (month_start);
