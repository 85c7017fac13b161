-- 1-minute partials of the raw readings in [start, end) (staged as stage_1m).
--
-- One pass: the window's rows are gathered per (device, field, hour) into arrays (a hash
-- aggregate, no global sort), then each hour group is validated, de-duplicated and binned
-- into minutes in memory.
--
-- A row is exactly one of, in this order: bad_device (device name empty, longer than
-- :max_name_bytes or holding control characters: it could not be registered, see
-- statements.MAX_NAME_BYTES; judged once per group), unknown_field (not in the catalogue), future
-- (stamped after latest_allowed), null, nan, inf, out_of_bounds (outside the field's
-- physical [lo, hi]), or valid. Valid rows sharing (device, field, time) are one reading
-- whose value is their mean; the extra copies count as `duplicate`.
-- M2 = var_pop * n (PostgreSQL's float8 variance is Youngs-Cramer, numerically stable).
--
-- Output rows: kind = 'minute' (one per window with valid readings: the partials),
-- kind = 'hour' (one per hour group with valid readings: the hour's exact median, from
-- the same de-duplicated values - so the hourly rollup needs no second raw pass) and
-- kind = 'rejects' (one per hour group: rows read and rejected, by reason). The hour row
-- also carries, when {hour_values} asks for them, the group's raw row count (hour_rows)
-- and its valid, de-duplicated readings in time order (times, vals: bi.hour_values, from
-- which the daily, weekly and monthly levels take medians without reading raw again);
-- otherwise NULLs. The reject
-- counts are count(x.t), not count(*): an aggregate whose filter only names the outer
-- group would belong to the outer query. {restrict} is TRUE, or (after the plain path,
-- stage_partials_1m_plain.sql) limits the pass to the hours that path could not prove
-- free of duplicates.
WITH catalogue AS (
    SELECT *
    FROM unnest(CAST(:fields AS text[]), CAST(:lo AS float8[]), CAST(:hi AS float8[]))
         AS c (field, lo, hi)
),
hour_groups AS (
    SELECT r.{device}::text AS device,
           r.{field}::text AS field,
           date_bin('1 hour', r.{time}, :origin) AS hour,
           array_agg(r.{time}) AS ts,
           array_agg(r.{value}) AS vs
    FROM {raw_table} AS r
    WHERE r.{time} >= :start AND r.{time} < :end
      AND {shard}
      AND {restrict}
    GROUP BY 1, 2, 3
),
groups AS (
    SELECT h.*, (octet_length(h.device) NOT BETWEEN 1 AND :max_name_bytes
                 OR h.device ~ :bad_name_pattern) AS bad_name
    FROM hour_groups AS h
)
SELECT g.device, g.field, c.field IS NOT NULL AS known, m.*
FROM groups AS g
LEFT JOIN catalogue AS c ON c.field = g.field
CROSS JOIN LATERAL (
    WITH d AS MATERIALIZED (
        SELECT x.t, avg(x.v) AS v, count(*) AS copies
        FROM unnest(g.ts, g.vs) AS x (t, v)
        WHERE NOT g.bad_name
          AND x.t <= :latest_allowed
          AND x.v >= c.lo AND x.v <= c.hi   -- false for NULL, NaN, +/-inf and unknown fields
        GROUP BY x.t
    )
    SELECT 'minute' AS kind,
           date_bin('1 minute', d.t, :origin) AS window_start,
           count(*) AS sample_count,
           avg(d.v) AS mean_value,
           min(d.v) AS min_value,
           max(d.v) AS max_value,
           coalesce(var_pop(d.v) * count(*), 0) AS m2,
           min(d.t) AS first_reading_at,
           max(d.t) AS last_reading_at,
           sum(d.copies - 1) AS duplicate,
           NULL::bigint AS raw_rows,
           NULL::bigint AS unknown_field,
           NULL::bigint AS future,
           NULL::bigint AS "null",
           NULL::bigint AS nan,
           NULL::bigint AS inf,
           NULL::bigint AS out_of_bounds,
           NULL::bigint AS bad_device,
           NULL::float8 AS median_value,
           NULL::bigint AS hour_rows,
           NULL::timestamptz[] AS times,
           NULL::float8[] AS vals
    FROM d
    GROUP BY 2
    UNION ALL
    SELECT 'hour', g.hour, count(*), NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY d.v),
           {hour_values}
    FROM d
    HAVING count(*) > 0
    UNION ALL
    SELECT 'rejects', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           cardinality(g.ts),
           count(*) FILTER (WHERE b.status = 1),
           count(*) FILTER (WHERE b.status = 2),
           count(*) FILTER (WHERE b.status = 3),
           count(*) FILTER (WHERE b.status = 4),
           count(*) FILTER (WHERE b.status = 5),
           count(*) FILTER (WHERE b.status = 6),
           count(*) FILTER (WHERE b.status = 7),
           NULL, NULL, NULL, NULL
    FROM (
        -- Only the rejected rows reach the CASE (all rows valid is the common case).
        SELECT CASE
                   WHEN g.bad_name THEN 7                                -- bad_device
                   WHEN c.field IS NULL THEN 1                           -- unknown_field
                   WHEN x.t > :latest_allowed THEN 2                     -- future
                   WHEN x.v IS NULL THEN 3                               -- null
                   WHEN x.v = 'NaN'::float8 THEN 4                       -- nan
                   WHEN x.v IN ('Infinity'::float8, '-Infinity'::float8) THEN 5  -- inf
                   ELSE 6                                                -- out_of_bounds
               END AS status
        FROM unnest(g.ts, g.vs) AS x (t, v)
        WHERE g.bad_name
           OR NOT coalesce(x.t <= :latest_allowed AND x.v >= c.lo AND x.v <= c.hi, false)
    ) AS b
) AS m
