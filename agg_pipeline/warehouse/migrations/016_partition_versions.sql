-- Data versions per (asset, partition): what self-healing compares (agg_pipeline/versions.py).
--
-- Every write of a partition (and every drained change to a raw hour) takes a new version
-- from one sequence; a write also records ``computed_from``: the highest committed version
-- in the warehouse when it began reading its parents, read in the same transaction before
-- any parent row. Versions are taken under one advisory lock held to commit, so version
-- order is commit order, and a child is stale exactly when a parent's version is above the
-- child's ``computed_from`` (or the child is missing while its parents hold data).
CREATE SEQUENCE IF NOT EXISTS ops.partition_version_seq;

CREATE TABLE IF NOT EXISTS ops.partition_versions (
    asset           text        NOT NULL,
    partition_start timestamptz NOT NULL,
    version         bigint      NOT NULL,
    computed_from   bigint,            -- NULL for sources (raw hours)
    written_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (asset, partition_start)
);
CREATE INDEX IF NOT EXISTS partition_versions_version ON ops.partition_versions (version);
CREATE INDEX IF NOT EXISTS partition_versions_start ON ops.partition_versions (partition_start);
