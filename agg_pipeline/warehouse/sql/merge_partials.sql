-- Merge (n, mean, M2, min, max) partials into coarser buckets, exactly.
-- {parts} yields (sensor_id, bucket, n, mean, mn, mx, m2, first_at, last_at).
-- Chan et al.'s parallel formula, pairwise as the rows arrive: bi.merge_moments (migration
-- 024) folds each part's (n, n * mean, M2) into the bucket's (N, Sx, Sxx) with
-- PostgreSQL's float8_combine, M2 = M2_1 + M2_2 + n_1 n_2 (mean_1 - mean_2)^2 / n. The
-- deviations are those of the means, never a naive sum of squares, so no precision is
-- lost to cancellation; one hash aggregate, no join back to the parts.
SELECT g.sensor_id, g.bucket, g.moments[1]::bigint AS n, g.moments[2] / g.moments[1] AS mean,
       g.mn, g.mx, g.moments[3] AS m2, g.first_at, g.last_at
FROM (
    SELECT p.sensor_id, p.bucket,
           bi.merge_moments(ARRAY[p.n::float8, p.n * p.mean, p.m2]) AS moments,
           min(p.mn) AS mn,
           max(p.mx) AS mx,
           min(p.first_at) AS first_at,
           max(p.last_at) AS last_at
    FROM ({parts}) AS p
    GROUP BY p.sensor_id, p.bucket
) AS g
