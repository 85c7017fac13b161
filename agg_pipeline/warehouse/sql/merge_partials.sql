-- Merge (n, mean, M2, min, max) partials into coarser buckets, exactly.
-- {parts} yields (sensor_id, bucket, n, mean, mn, mx, m2, first_at, last_at).
-- Chan et al.'s parallel formula, k-way: M2 = sum(M2_i) + sum(n_i * (mean_i - mean)^2)
-- with mean = sum(n_i * mean_i) / n. Deviations are taken from the merged mean, never
-- from a naive sum of squares, so no precision is lost to cancellation.
WITH parts AS MATERIALIZED (
    {parts}
),
totals AS (
    SELECT sensor_id, bucket,
           sum(n) AS n,
           sum(n * mean) / sum(n) AS mean,
           min(mn) AS mn,
           max(mx) AS mx,
           min(first_at) AS first_at,
           max(last_at) AS last_at
    FROM parts
    GROUP BY sensor_id, bucket
)
SELECT t.sensor_id, t.bucket, t.n, t.mean, t.mn, t.mx,
       sum(p.m2 + p.n * (p.mean - t.mean) * (p.mean - t.mean)) AS m2,
       t.first_at, t.last_at
FROM totals AS t
JOIN parts AS p USING (sensor_id, bucket)
GROUP BY t.sensor_id, t.bucket, t.n, t.mean, t.mn, t.mx, t.first_at, t.last_at
