-- Event rollups (issue 13), the cheap paths (warehouse/events.py):
--
-- 1. Merge partials: a coarser level merges avg / stddev from the level below it exactly
--    (Chan's parallel formula on count / mean / M2, never sums of squares), so each avg
--    measure keeps its count of values (<measure>__n) beside it, and each stddev measure
--    its n, mean and M2 (<measure>__n, __mean, __m2). Rows written before this migration
--    have NULL partials: a level above them is computed from raw until they are rewritten.
ALTER TABLE analytics.execution_metrics_hourly  ADD COLUMN IF NOT EXISTS avg_duration_ms__n bigint;
ALTER TABLE analytics.execution_metrics_daily   ADD COLUMN IF NOT EXISTS avg_duration_ms__n bigint;
ALTER TABLE analytics.execution_metrics_weekly  ADD COLUMN IF NOT EXISTS avg_duration_ms__n bigint;
ALTER TABLE analytics.execution_metrics_monthly ADD COLUMN IF NOT EXISTS avg_duration_ms__n bigint;

-- 2. Repeated ids: "a second row with the same id is a duplicate" needs, per event, a look
--    for another row of its id anywhere in the table. Instead of probing every event of
--    every window at every grain, the table's insert / update triggers note each id once
--    (INSERT ... ON CONFLICT: two writers of one id serialize on the key, so no repeat is
--    missed between concurrent transactions), flagging the ids seen more than once. A
--    rollup then runs the full duplicate test only on events whose id is flagged - the
--    plain path for everything else. An id stays flagged after its copies are deleted
--    (harmless: the full test then finds no earlier copy). A table without the trigger
--    (a catalogue's own) gets the full test on every event, as before.
CREATE TABLE IF NOT EXISTS raw.event_ids_seen (
    source   text    NOT NULL,  -- the raw table, schema.name
    id       text    NOT NULL,
    repeated boolean NOT NULL DEFAULT false,
    PRIMARY KEY (source, id)
);
CREATE INDEX IF NOT EXISTS event_ids_seen_repeated ON raw.event_ids_seen (source) WHERE repeated;

-- TG_ARGV[0]: the id column. An UPDATE notes the ids it introduced (new minus old).
CREATE OR REPLACE FUNCTION raw.log_event_ids() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    rows_of text := CASE WHEN TG_OP = 'UPDATE'
        THEN 'SELECT %1$I::text AS id FROM changed EXCEPT ALL SELECT %1$I::text FROM before'
        ELSE 'SELECT %1$I::text AS id FROM changed' END;
BEGIN
    EXECUTE format(
        'INSERT INTO raw.event_ids_seen AS s (source, id, repeated)
         SELECT %2$L, id, count(*) > 1 FROM (' || rows_of || ') AS t
         WHERE id IS NOT NULL GROUP BY id ORDER BY id
         ON CONFLICT (source, id) DO UPDATE SET repeated = true WHERE NOT s.repeated',
        TG_ARGV[0], TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS log_event_ids_insert ON raw.executions;
CREATE TRIGGER log_event_ids_insert AFTER INSERT ON raw.executions
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_event_ids('id');
DROP TRIGGER IF EXISTS log_event_ids_update ON raw.executions;
CREATE TRIGGER log_event_ids_update AFTER UPDATE ON raw.executions
    REFERENCING OLD TABLE AS before NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_event_ids('id');

-- The rows already there (after the triggers: a row inserted meanwhile is noted by both,
-- and the flags only ever turn on).
INSERT INTO raw.event_ids_seen AS s (source, id, repeated)
SELECT 'raw.executions', id::text, count(*) > 1 FROM raw.executions
WHERE id IS NOT NULL GROUP BY id
ON CONFLICT (source, id) DO UPDATE SET repeated = s.repeated OR EXCLUDED.repeated;
