-- Home-automation state changes and the six daily pattern aggregates (the old InfluxDB
-- bucket pattern_aggregates_daily). Arrays and maps are JSONB. Each day is replaced
-- atomically by its asset; keys are (day, detector key).
CREATE TABLE IF NOT EXISTS raw.events (
    id        bigserial,         -- ingestion order (out-of-order detection)
    time      timestamptz NOT NULL,
    entity_id text NOT NULL,
    domain    text NOT NULL,
    area_id   text,
    state     text NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time_brin ON raw.events USING brin (time)
    WITH (autosummarize = on);
-- The last state of an entity before a day starts needs a per-entity lookup.
CREATE INDEX IF NOT EXISTS events_entity_time ON raw.events (entity_id, time);

CREATE TABLE IF NOT EXISTS bi.pattern_time_based_daily (
    day                 date NOT NULL,
    entity_id           text NOT NULL,
    domain              text NOT NULL,
    hourly_distribution jsonb NOT NULL,
    peak_hours          jsonb NOT NULL,
    frequency           double precision NOT NULL,
    confidence          double precision NOT NULL,
    occurrences         integer NOT NULL,
    PRIMARY KEY (day, entity_id)
);
CREATE TABLE IF NOT EXISTS bi.pattern_co_occurrence_daily (
    day                 date NOT NULL,
    device_pair         text NOT NULL,
    entity_a            text NOT NULL,
    entity_b            text NOT NULL,
    co_occurrence_count integer NOT NULL,
    time_window_seconds integer NOT NULL,
    confidence          double precision NOT NULL,
    typical_hours       jsonb NOT NULL,
    PRIMARY KEY (day, device_pair)
);
CREATE TABLE IF NOT EXISTS bi.pattern_sequence_daily (
    day                  date NOT NULL,
    sequence_id          text NOT NULL,
    sequence             jsonb NOT NULL,
    frequency            integer NOT NULL,
    avg_duration_seconds double precision NOT NULL,
    confidence           double precision NOT NULL,
    PRIMARY KEY (day, sequence_id)
);
CREATE TABLE IF NOT EXISTS bi.pattern_room_based_daily (
    day                 date NOT NULL,
    area_id             text NOT NULL,
    activity_level      double precision NOT NULL,
    device_usage        jsonb NOT NULL,
    transition_patterns jsonb NOT NULL,
    peak_activity_hours jsonb NOT NULL,
    PRIMARY KEY (day, area_id)
);
CREATE TABLE IF NOT EXISTS bi.pattern_duration_daily (
    day                  date NOT NULL,
    entity_id            text NOT NULL,
    sessions             integer NOT NULL,
    avg_duration_seconds double precision NOT NULL,
    min_duration_seconds double precision NOT NULL,
    max_duration_seconds double precision NOT NULL,
    duration_variance    double precision NOT NULL,
    efficiency_score     double precision NOT NULL,
    PRIMARY KEY (day, entity_id)
);
CREATE TABLE IF NOT EXISTS bi.pattern_anomaly_daily (
    day                date NOT NULL,
    entity_id          text NOT NULL,
    anomaly_type       text NOT NULL,
    anomaly_score      double precision NOT NULL,
    baseline_deviation double precision NOT NULL,
    occurrences        integer NOT NULL,
    severity           text NOT NULL,
    baseline_days      integer NOT NULL,
    baseline_mean      double precision NOT NULL,
    PRIMARY KEY (day, entity_id)
);
