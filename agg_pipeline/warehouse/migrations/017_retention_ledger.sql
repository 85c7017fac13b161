-- Days whose raw rows retention released (deleted or dropped with their partition), per
-- raw table. The rollups of a released day are final: a later run over that day (a
-- backfill of old history, a late reading that arrived after the release) keeps them
-- instead of recomputing them from the raw rows that are left (agg_pipeline/retention.py).
CREATE TABLE IF NOT EXISTS ops.raw_retention_ledger (
    source_table text        NOT NULL,
    day          date        NOT NULL,
    released_at  timestamptz NOT NULL DEFAULT now(),
    rows_deleted bigint      NOT NULL,
    method       text        NOT NULL CHECK (method IN ('delete', 'drop partition')),
    PRIMARY KEY (source_table, day)
);
