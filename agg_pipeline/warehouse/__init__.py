"""Everything that speaks SQL to the PostgreSQL warehouse. ``migrations/`` holds the numbered,
idempotent DDL files ``agg-pipeline migrate`` applies (shipped as package data)."""
