-- Late-data detection without scanning raw readings.
--
-- A statement-level trigger logs, for every INSERT / UPDATE / DELETE statement on the raw
-- table, how many rows it touched per 15-minute bucket of reading time (15 minutes divide
-- every UTC offset, so any zone's hours are whole buckets). The log is append-only: no
-- row is ever updated by ingestion, so concurrent writers never contend on it.
-- The late-data sensor drains the log (agg_pipeline/late_data.py) into
-- raw.readings_late_hours: per hour, the rows that arrived after the hour had settled.
CREATE TABLE IF NOT EXISTS raw.readings_change_log (
    bucket_start timestamptz NOT NULL,
    rows_changed bigint      NOT NULL,
    max_time     timestamptz NOT NULL,
    logged_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE IF NOT EXISTS raw.readings_late_hours (
    hour_start    timestamptz PRIMARY KEY,
    late_rows     bigint      NOT NULL,
    last_late_at  timestamptz NOT NULL,
    change_seq    bigint      NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS raw.readings_late_seq;
CREATE INDEX IF NOT EXISTS readings_late_hours_seq ON raw.readings_late_hours (change_seq);

-- TG_ARGV[0]: the time column of the table the trigger is attached to (default "time").
-- Attach it to your own raw table the same way, e.g.
--   CREATE TRIGGER log_insert AFTER INSERT ON my.readings REFERENCING NEW TABLE AS changed
--     FOR EACH STATEMENT EXECUTE FUNCTION raw.log_reading_changes('ts');
CREATE OR REPLACE FUNCTION raw.log_reading_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    time_column text := coalesce(TG_ARGV[0], 'time');
BEGIN
    EXECUTE format(
        'INSERT INTO raw.readings_change_log (bucket_start, rows_changed, max_time)
         SELECT date_bin(''15 minutes'', %1$I, timestamptz ''2000-01-01 00:00+00''),
                count(*), max(%1$I)
         FROM changed GROUP BY 1', time_column);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS log_insert ON raw.readings;
CREATE TRIGGER log_insert AFTER INSERT ON raw.readings
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_reading_changes('time');
DROP TRIGGER IF EXISTS log_update ON raw.readings;
CREATE TRIGGER log_update AFTER UPDATE ON raw.readings
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_reading_changes('time');
DROP TRIGGER IF EXISTS log_delete ON raw.readings;
CREATE TRIGGER log_delete AFTER DELETE ON raw.readings
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_reading_changes('time');
