-- The valid, de-duplicated readings of each sensor-hour, in time order, kept by readings_1m
-- from the same pass over raw as the 1-minute partials (issue 15: one raw pass). The
-- daily, weekly and monthly levels take their exact medians and the daily condition
-- shares from here instead of reading raw again, whenever these hours are current
-- (sources/postgres.py: readings_1m current for every hour and the raw row counts equal);
-- otherwise they read raw, as before. About 16 bytes per reading; retention deletes a
-- day's hours with the day's raw rows. AGG_PIPELINE_HOUR_VALUES=false stops writing it.
-- UNLOGGED: it is derived from raw, and writing it through the WAL nearly doubled its
-- cost in the 1-minute pass. A crash empties it (and a standby never has it): the counts
-- then differ from raw, so the levels read raw until readings_1m rewrites the hours.
CREATE UNLOGGED TABLE IF NOT EXISTS bi.hour_values (
    sensor_id     integer NOT NULL,  -- iot.sensors.id (no FK, as the other high-volume tables: 011)
    hour_start    timestamptz NOT NULL,
    reading_count integer NOT NULL,  -- valid, de-duplicated readings (= cardinality(vals))
    raw_rows      bigint NOT NULL,   -- raw rows of the (device, field, hour), rejected ones too
    times         timestamptz[] NOT NULL,
    vals          double precision[] NOT NULL,
    PRIMARY KEY (sensor_id, hour_start)
);
CREATE INDEX IF NOT EXISTS hour_values_hour ON bi.hour_values (hour_start);
-- Stored uncompressed: pglz barely shrinks float arrays and costs time on every read.
ALTER TABLE bi.hour_values ALTER COLUMN times SET STORAGE EXTERNAL;
ALTER TABLE bi.hour_values ALTER COLUMN vals SET STORAGE EXTERNAL;
