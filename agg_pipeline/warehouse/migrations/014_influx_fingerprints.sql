-- Late-data observation for an InfluxDB raw source (no trigger can log its writes): the
-- last fingerprint seen per hour of reading time - points and the latest point's time,
-- from one Flux query over the lookback. A fingerprint that changes after its hour
-- settled means late points; agg_pipeline.late_data records them in
-- raw.readings_late_hours exactly like the PostgreSQL trigger's log.
CREATE TABLE IF NOT EXISTS ops.influx_hour_fingerprints (
    hour_start    timestamptz PRIMARY KEY,
    point_count   bigint NOT NULL,
    last_point_at timestamptz,
    observed_at   timestamptz NOT NULL
);
