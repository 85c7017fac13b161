-- Schemas of the warehouse. Every file in sql/ is idempotent: `agg-pipeline migrate`
-- applies new (or changed) files in name order and records them in ops.schema_migrations.
CREATE SCHEMA IF NOT EXISTS raw;   -- raw readings (the source, when it is PostgreSQL)
CREATE SCHEMA IF NOT EXISTS iot;   -- devices, sensor types, sensors (auto-registered)
CREATE SCHEMA IF NOT EXISTS crop;  -- growth stages and crop batches: optimal ranges
CREATE SCHEMA IF NOT EXISTS bi;    -- everything agg_pipeline materializes
CREATE SCHEMA IF NOT EXISTS ops;   -- bookkeeping of agg_pipeline itself
