-- Daily condition percentages per sensor, for fields that have an optimal range.
-- Two views of the same day:
--   by count:      share of valid readings in the optimal / critical band;
--   time-weighted: each reading holds until the next one (at most max_gap_seconds, and
--                  not past the end of the day); share of that covered time.
-- Critical = more than critical_margin_pct beyond an optimal bound. coverage_pct = valid
-- readings / expected readings (day length / the catalogue's sample interval, per sensor).
-- bi.daily_sensor_agg.time_in_optimal_pct / time_in_critical_pct mirror the time-weighted
-- values, as the old ETL's dashboards expect.
CREATE TABLE IF NOT EXISTS bi.daily_sensor_conditions (
    sensor_id              integer NOT NULL REFERENCES iot.sensors (id),
    metric_date            date NOT NULL,
    optimal_min            double precision NOT NULL,
    optimal_max            double precision NOT NULL,
    critical_below         double precision NOT NULL,
    critical_above         double precision NOT NULL,
    reading_count          bigint NOT NULL,
    optimal_pct_by_count   double precision,
    critical_pct_by_count  double precision,
    covered_seconds        double precision NOT NULL,
    time_in_optimal_pct    double precision,
    time_in_critical_pct   double precision,
    expected_readings      double precision NOT NULL,
    coverage_pct           double precision NOT NULL,
    computed_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sensor_id, metric_date)
);
CREATE INDEX IF NOT EXISTS daily_sensor_conditions_date ON bi.daily_sensor_conditions (metric_date);
