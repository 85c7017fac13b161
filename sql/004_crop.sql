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

-- Sensible hydroponic defaults (butterhead lettuce), and one open-ended demo batch so
-- conditions are computed out of the box. Edit or replace them for your crops.
INSERT INTO crop.growth_stage_definitions
    (crop_name, stage_name, stage_order, field, optimal_min, optimal_max)
VALUES
    ('lettuce', 'seedling',   1, 'temperature', 18.0, 24.0),
    ('lettuce', 'seedling',   1, 'humidity',    60.0, 75.0),
    ('lettuce', 'seedling',   1, 'ph',           5.8,  6.3),
    ('lettuce', 'seedling',   1, 'ec',           0.8,  1.2),
    ('lettuce', 'vegetative', 2, 'temperature', 17.0, 24.0),
    ('lettuce', 'vegetative', 2, 'humidity',    50.0, 70.0),
    ('lettuce', 'vegetative', 2, 'ph',           5.5,  6.5),
    ('lettuce', 'vegetative', 2, 'ec',           1.2,  2.0),
    ('lettuce', 'mature',     3, 'temperature', 16.0, 22.0),
    ('lettuce', 'mature',     3, 'humidity',    50.0, 70.0),
    ('lettuce', 'mature',     3, 'ph',           5.5,  6.5),
    ('lettuce', 'mature',     3, 'ec',           1.5,  2.2)
ON CONFLICT (crop_name, stage_name, field) DO NOTHING;

INSERT INTO crop.batches (batch_code, crop_name, stage_name, started_on)
VALUES ('DEMO-LETTUCE-1', 'lettuce', 'vegetative', DATE '2025-01-01')
ON CONFLICT (batch_code) DO NOTHING;
