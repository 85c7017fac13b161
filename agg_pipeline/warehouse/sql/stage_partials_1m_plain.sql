-- 1-minute partials of the raw readings in [start, end): the plain GROUP BY path.
--
-- The same rows as stage_partials_1m.sql (staged as stage_1m, same columns, plus `clean`),
-- without gathering each hour into arrays to de-duplicate it: validity is a FILTER on the
-- aggregates (a row is valid exactly when it is there: known field, not future, inside
-- [lo, hi], which is false for NULL, NaN and +/-inf), rejects are counted by reason the
-- same way, in the same order (bad_device is judged per group, after aggregating).
--
-- Exact only when no two valid rows of a group share a time. `clean` proves it per minute:
-- each valid row sets the bit of its slot (a function of its time: which 1/64 of a minute
-- its second falls in), and when as many bits are set as there are valid rows, no slot
-- holds two rows, so no two rows share a time (whatever the slot function). A
-- minute that is not clean (a duplicate, or two readings within one slot) may be wrong
-- here: the writer re-stages its whole hour through stage_partials_1m.sql (the exact path,
-- restricted to those hours by :redo_device / :redo_field / :redo_hour), so what is
-- written is always exact.
--
-- kind = 'minute' rows carry the partials, kind = 'hour' the hour's exact median (a
-- second hash aggregate over the same rows), kind = 'rejects' the reject counts per minute group
-- (its window_start is the minute's, so the writer can replace an hour's rows).
WITH catalogue AS (
    SELECT *
    FROM unnest(CAST(:fields AS text[]), CAST(:lo AS float8[]), CAST(:hi AS float8[]))
         AS c (field, lo, hi)
),
judged AS NOT MATERIALIZED (
    SELECT r.{device}::text AS device,
           r.{field}::text AS field,
           c.field IS NOT NULL AS known,
           r.{time} AS t,
           r.{value} AS v,
           coalesce(r.{time} <= :latest_allowed AND r.{value} >= c.lo AND r.{value} <= c.hi,
                    false) AS ok
    FROM {raw_table} AS r
    LEFT JOIN catalogue AS c ON c.field = r.{field}::text
    WHERE r.{time} >= :start AND r.{time} < :end
      AND {shard}
),
minutes AS MATERIALIZED (
    SELECT j.device, j.field, j.known,
           date_bin('1 minute', j.t, :origin) AS window_start,
           count(*) AS raw_rows,
           count(*) FILTER (WHERE j.ok) AS n,
           avg(j.v) FILTER (WHERE j.ok) AS mean_value,
           min(j.v) FILTER (WHERE j.ok) AS min_value,
           max(j.v) FILTER (WHERE j.ok) AS max_value,
           coalesce(var_pop(j.v) FILTER (WHERE j.ok) * count(*) FILTER (WHERE j.ok), 0) AS m2,
           min(j.t) FILTER (WHERE j.ok) AS first_reading_at,
           max(j.t) FILTER (WHERE j.ok) AS last_reading_at,
           count(*) FILTER (WHERE j.t > :latest_allowed) AS future,
           count(*) FILTER (WHERE j.t <= :latest_allowed AND j.v IS NULL) AS "null",
           count(*) FILTER (WHERE j.t <= :latest_allowed AND j.v = 'NaN'::float8) AS nan,
           count(*) FILTER (WHERE j.t <= :latest_allowed
                              AND j.v IN ('Infinity'::float8, '-Infinity'::float8)) AS inf,
           -- The slot: which 1/64 of its minute (0.94 s) a reading's second falls in.
           bit_or(1::bigint << floor(date_part('second', j.t) * 64 / 60)::int)
               FILTER (WHERE j.ok) AS bits
    FROM judged AS j
    GROUP BY 1, 2, 3, 4
),
judged_minutes AS (
    SELECT m.*,
           (octet_length(m.device) NOT BETWEEN 1 AND :max_name_bytes
            OR m.device ~ :bad_name_pattern) AS bad_name,
           m.n = coalesce(bit_count(m.bits::bit(64)), 0) AS clean
    FROM minutes AS m
)
SELECT m.device, m.field, m.known, 'minute' AS kind, m.window_start,
       m.n AS sample_count, m.mean_value, m.min_value, m.max_value, m.m2,
       m.first_reading_at, m.last_reading_at,
       0::bigint AS duplicate,
       NULL::bigint AS raw_rows, NULL::bigint AS unknown_field, NULL::bigint AS future,
       NULL::bigint AS "null", NULL::bigint AS nan, NULL::bigint AS inf,
       NULL::bigint AS out_of_bounds, NULL::bigint AS bad_device,
       NULL::float8 AS median_value, m.clean,
       -- The plain path keeps no hour values (the levels above then read raw).
       NULL::bigint AS hour_rows, NULL::timestamptz[] AS times, NULL::float8[] AS vals
FROM judged_minutes AS m
WHERE m.n > 0 AND NOT m.bad_name
UNION ALL
SELECT m.device, m.field, m.known, 'rejects', m.window_start, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, m.raw_rows,
       CASE WHEN NOT m.bad_name AND NOT m.known THEN m.raw_rows ELSE 0 END,
       CASE WHEN m.bad_name OR NOT m.known THEN 0 ELSE m.future END,
       CASE WHEN m.bad_name OR NOT m.known THEN 0 ELSE m."null" END,
       CASE WHEN m.bad_name OR NOT m.known THEN 0 ELSE m.nan END,
       CASE WHEN m.bad_name OR NOT m.known THEN 0 ELSE m.inf END,
       CASE WHEN m.bad_name OR NOT m.known THEN 0
            ELSE m.raw_rows - m.n - m.future - m."null" - m.nan - m.inf END,
       CASE WHEN m.bad_name THEN m.raw_rows ELSE 0 END,
       NULL, TRUE, NULL, NULL, NULL
FROM judged_minutes AS m
UNION ALL
SELECT h.device, h.field, TRUE, 'hour', h.hour, cardinality(h.vs), NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x.v) FROM unnest(h.vs) AS x (v)),
       TRUE, NULL, NULL, NULL
FROM (
    -- The hour's valid values gathered by a hash aggregate, each array sorted on its own:
    -- measured 1.3 s against 8.7 s for percentile_cont over a sorted GROUP BY (a day of
    -- 1.3M readings, 2 cores).
    -- OFFSET 0: judge the names per hour group, after aggregating (the planner would push
    -- the test down to every row).
    SELECT j.device, j.field, date_bin('1 hour', j.t, :origin) AS hour, array_agg(j.v) AS vs
    FROM judged AS j
    WHERE j.ok
    GROUP BY 1, 2, 3
    OFFSET 0
) AS h
WHERE NOT (octet_length(h.device) NOT BETWEEN 1 AND :max_name_bytes
           OR h.device ~ :bad_name_pattern)
