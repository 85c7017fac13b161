-- Optimal ranges per field come from the growth stages of crop batches. The range used for
-- a day is the widest across the batches active on that day (the most permissive), as the
-- old ETL did; a batch is active on day D when started_on <= D <= coalesce(ended_on, D).
CREATE TABLE IF NOT EXISTS crop.growth_stage_definitions (
    id          serial PRIMARY KEY,
    crop_name   text NOT NULL,
    stage_name  text NOT NULL,
    stage_order integer NOT NULL DEFAULT 0,
    field       text NOT NULL,
    optimal_min double precision NOT NULL,
    optimal_max double precision NOT NULL,
    CHECK (optimal_max > optimal_min),
    UNIQUE (crop_name, stage_name, field)
);

CREATE TABLE IF NOT EXISTS crop.batches (
    id         serial PRIMARY KEY,
    batch_code text NOT NULL UNIQUE,
    crop_name  text NOT NULL,
    stage_name text NOT NULL,
    started_on date NOT NULL,
    ended_on   date,
    CHECK (ended_on IS NULL OR ended_on >= started_on)
);

-- No rows here: `migrate` runs against users' databases, and a demo batch open since 2025
-- would widen every real crop's optimal range (the widest active range wins). The demo
-- lettuce stages and batch DEMO-LETTUCE-1 are written by `agg-pipeline seed`
-- (agg_pipeline/simulator.py: write_demo_crops). Without a batch, conditions use the
-- catalogue's default `optimal` ranges.
