"""agg_pipeline: correct, fresh and cheap time-series rollups of sensor readings, as Dagster
assets on PostgreSQL. The Dagster code location is ``agg_pipeline.definitions``; the layers
and which way imports point are described in ARCHITECTURE.md."""
