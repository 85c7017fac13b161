-- Self-healing for the event rollups (issue 13): the shipped analytics catalogue's raw
-- event tables (019) get the change log raw.events and raw.diagnostics have (018): a
-- statement-level trigger per INSERT / UPDATE / DELETE appends the rows touched per
-- 15-minute bucket of their time to raw.source_change_log, under the source asset's name;
-- the healer's tick drains it into source-hour versions (late_data.drain_sources), and
-- every event rollup level over a changed hour is recomputed (healing.py).
-- A catalogue pointed at its own tables needs the same three triggers on each (README,
-- "Self-healing"): raw.log_source_changes('<source asset>', '<time column>').

DROP TRIGGER IF EXISTS log_insert ON raw.executions;
CREATE TRIGGER log_insert AFTER INSERT ON raw.executions
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_source_changes('raw_executions', 'time');
DROP TRIGGER IF EXISTS log_update ON raw.executions;
CREATE TRIGGER log_update AFTER UPDATE ON raw.executions
    REFERENCING OLD TABLE AS before NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_source_changes('raw_executions', 'time');
DROP TRIGGER IF EXISTS log_delete ON raw.executions;
CREATE TRIGGER log_delete AFTER DELETE ON raw.executions
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_source_changes('raw_executions', 'time');

DROP TRIGGER IF EXISTS log_insert ON raw.user_activity;
CREATE TRIGGER log_insert AFTER INSERT ON raw.user_activity
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_source_changes('raw_user_activity', 'time');
DROP TRIGGER IF EXISTS log_update ON raw.user_activity;
CREATE TRIGGER log_update AFTER UPDATE ON raw.user_activity
    REFERENCING OLD TABLE AS before NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_source_changes('raw_user_activity', 'time');
DROP TRIGGER IF EXISTS log_delete ON raw.user_activity;
CREATE TRIGGER log_delete AFTER DELETE ON raw.user_activity
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_source_changes('raw_user_activity', 'time');

DROP TRIGGER IF EXISTS log_insert ON raw.credit_usage;
CREATE TRIGGER log_insert AFTER INSERT ON raw.credit_usage
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_source_changes('raw_credit_usage', 'time');
DROP TRIGGER IF EXISTS log_update ON raw.credit_usage;
CREATE TRIGGER log_update AFTER UPDATE ON raw.credit_usage
    REFERENCING OLD TABLE AS before NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_source_changes('raw_credit_usage', 'time');
DROP TRIGGER IF EXISTS log_delete ON raw.credit_usage;
CREATE TRIGGER log_delete AFTER DELETE ON raw.credit_usage
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION raw.log_source_changes('raw_credit_usage', 'time');
