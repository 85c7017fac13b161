-- Self-healing for the other sources and the checks' verdicts (agg_pipeline/healing.py).
--
-- 1. raw.events and raw.diagnostics get a change log like raw.readings (sql/008): a
--    statement-level trigger with transition tables appends, per statement, the rows it
--    touched per 15-minute bucket of their time (an UPDATE logs the rows' old and new
--    times: an event moved to another day changes both days). The healer's tick drains
--    the log into raw-hour versions of the source asset (late_data.drain_sources).
-- 2. ops.partition_versions gets the verdicts of the checks on a written partition:
--    inconsistent_version - the partition, as written at that version, disagreed with its
--    parents as they are now (cross-level consistency): stale until rewritten;
--    inconsistent_runs - consecutive writes found inconsistent (the healer stops retrying
--    after a few and reports the partition instead of looping);
--    failed_check - a blocking check that failed on the latest write: its children are
--    held until a write passes.
CREATE TABLE IF NOT EXISTS raw.source_change_log (
    source       text        NOT NULL,  -- the source asset: raw_events | raw_diagnostics
    bucket_start timestamptz NOT NULL,
    rows_changed bigint      NOT NULL,
    logged_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- TG_ARGV[0]: the source asset's name; TG_ARGV[1]: the table's time column.
CREATE OR REPLACE FUNCTION raw.log_source_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    rows_of text := CASE WHEN TG_OP = 'UPDATE'
        THEN 'SELECT %1$I FROM changed UNION ALL SELECT %1$I FROM before'
        ELSE 'SELECT %1$I FROM changed' END;
BEGIN
    EXECUTE format(
        'INSERT INTO raw.source_change_log (source, bucket_start, rows_changed)
         SELECT %2$L, date_bin(''15 minutes'', %1$I, timestamptz ''2000-01-01 00:00+00''),
                count(*)
         FROM (' || rows_of || ') AS t GROUP BY 2', TG_ARGV[1], TG_ARGV[0]);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS log_insert ON raw.events;
CREATE TRIGGER log_insert AFTER INSERT ON raw.events
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_source_changes('raw_events', 'time');
DROP TRIGGER IF EXISTS log_update ON raw.events;
CREATE TRIGGER log_update AFTER UPDATE ON raw.events
    REFERENCING OLD TABLE AS before NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_source_changes('raw_events', 'time');
DROP TRIGGER IF EXISTS log_delete ON raw.events;
CREATE TRIGGER log_delete AFTER DELETE ON raw.events
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_source_changes('raw_events', 'time');

DROP TRIGGER IF EXISTS log_insert ON raw.diagnostics;
CREATE TRIGGER log_insert AFTER INSERT ON raw.diagnostics
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_source_changes('raw_diagnostics', 'time');
DROP TRIGGER IF EXISTS log_update ON raw.diagnostics;
CREATE TRIGGER log_update AFTER UPDATE ON raw.diagnostics
    REFERENCING OLD TABLE AS before NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_source_changes('raw_diagnostics', 'time');
DROP TRIGGER IF EXISTS log_delete ON raw.diagnostics;
CREATE TRIGGER log_delete AFTER DELETE ON raw.diagnostics
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_source_changes('raw_diagnostics', 'time');

ALTER TABLE ops.partition_versions ADD COLUMN IF NOT EXISTS inconsistent_version bigint;
ALTER TABLE ops.partition_versions
    ADD COLUMN IF NOT EXISTS inconsistent_runs integer NOT NULL DEFAULT 0;
ALTER TABLE ops.partition_versions ADD COLUMN IF NOT EXISTS failed_check text;
