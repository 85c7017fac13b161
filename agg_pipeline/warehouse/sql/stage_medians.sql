-- Exact medians of the valid, de-duplicated raw readings per (device, field, bucket),
-- (staged as stage_medians). Same validity rules as stage_partials_1m.sql.
-- Values are gathered into per-group arrays by a hash aggregate and each group is sorted
-- on its own: measured ~3.5x faster than percentile_cont over a GROUP BY, which sorts
-- the whole window by group key before sorting each group again.
-- {bucket} is an expression of the reading time r.{time}.
WITH catalogue AS (
    SELECT *
    FROM unnest(CAST(:fields AS text[]), CAST(:lo AS float8[]), CAST(:hi AS float8[]))
         AS c (field, lo, hi)
),
groups AS (
    SELECT r.{device}::text AS device,
           r.{field}::text AS field,
           {bucket} AS bucket,
           array_agg(r.{time}) AS ts,
           array_agg(r.{value}) AS vs
    FROM {raw_table} AS r
    WHERE r.{time} >= :start AND r.{time} < :end
      AND {shard}
      AND r.{field} = ANY (CAST(:fields AS text[]))
    GROUP BY 1, 2, 3
)
SELECT g.device, g.field, g.bucket, m.n, m.median
FROM groups AS g
JOIN catalogue AS c ON c.field = g.field
CROSS JOIN LATERAL (
    SELECT count(*) AS n,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY d.v) AS median
    FROM (
        SELECT x.t, avg(x.v) AS v
        FROM unnest(g.ts, g.vs) AS x (t, v)
        WHERE x.t <= :latest_allowed
          AND x.v >= c.lo AND x.v <= c.hi   -- excludes NULL, NaN and +/-inf too
        GROUP BY x.t
    ) AS d
) AS m
WHERE m.n > 0
  -- bad device names (stage_partials_1m.sql) are left out here too: never registered
  AND octet_length(g.device) BETWEEN 1 AND :max_name_bytes
  AND g.device !~ :bad_name_pattern
