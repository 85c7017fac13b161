-- 1-minute partials of the raw readings in [start, end), into the temp table stage_1m.
--
-- One pass: the window's rows are gathered per (device, field, hour) into arrays (a hash
-- aggregate, no global sort), then each hour group is validated, de-duplicated and binned
-- into minutes in memory.
--
-- A row is exactly one of, in this order: unknown_field (not in the catalogue), future
-- (stamped after latest_allowed), null, nan, inf, out_of_bounds (outside the field's
-- physical [lo, hi]), or valid. Valid rows sharing (device, field, time) are one reading
-- whose value is their mean; the extra copies count as `duplicate`.
-- M2 = var_pop * n (PostgreSQL's float8 variance is Youngs-Cramer, numerically stable).
--
-- Output rows: kind = 'minute' (one per window with valid readings: the partials) and
-- kind = 'rejects' (one per hour group: rows read and rejected, by reason). The reject
-- counts are count(x.t), not count(*): an aggregate whose filter only names the outer
-- group would belong to the outer query.
CREATE TEMP TABLE stage_1m ON COMMIT DROP AS
WITH catalogue AS (
    SELECT *
    FROM unnest(CAST(:fields AS text[]), CAST(:lo AS float8[]), CAST(:hi AS float8[]))
         AS c (field, lo, hi)
),
hour_groups AS (
    SELECT r.{device}::text AS device,
           r.{field}::text AS field,
           array_agg(r.{time}) AS ts,
           array_agg(r.{value}) AS vs
    FROM {raw_table} AS r
    WHERE r.{time} >= :start AND r.{time} < :end
    GROUP BY 1, 2, date_bin('1 hour', r.{time}, :origin)
)
SELECT g.device, g.field, c.field IS NOT NULL AS known, m.*
FROM hour_groups AS g
LEFT JOIN catalogue AS c ON c.field = g.field
CROSS JOIN LATERAL (
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
           NULL::bigint AS out_of_bounds
    FROM (
        SELECT x.t, avg(x.v) AS v, count(*) AS copies
        FROM unnest(g.ts, g.vs) AS x (t, v)
        WHERE x.t <= :latest_allowed
          AND x.v >= c.lo AND x.v <= c.hi   -- false for NULL, NaN, +/-inf and unknown fields
        GROUP BY x.t
    ) AS d
    GROUP BY 2
    UNION ALL
    SELECT 'rejects', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           count(x.t),
           count(x.t) FILTER (WHERE c.field IS NULL),
           count(x.t) FILTER (WHERE c.field IS NOT NULL AND x.t > :latest_allowed),
           count(x.t) FILTER (WHERE c.field IS NOT NULL AND x.t <= :latest_allowed
                                  AND x.v IS NULL),
           count(x.t) FILTER (WHERE c.field IS NOT NULL AND x.t <= :latest_allowed
                                  AND x.v = 'NaN'::float8),
           count(x.t) FILTER (WHERE c.field IS NOT NULL AND x.t <= :latest_allowed
                                  AND x.v IN ('Infinity'::float8, '-Infinity'::float8)),
           count(x.t) FILTER (WHERE c.field IS NOT NULL AND x.t <= :latest_allowed
                                  AND x.v <> 'NaN'::float8
                                  AND x.v NOT IN ('Infinity'::float8, '-Infinity'::float8)
                                  AND (x.v < c.lo OR x.v > c.hi))
    FROM unnest(g.ts, g.vs) AS x (t, v)
) AS m
