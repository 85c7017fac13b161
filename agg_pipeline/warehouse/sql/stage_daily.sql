-- One pass over a day's raw readings for everything the daily level needs from raw, per
-- (device, field, local day), (staged as stage_daily):
--   - the exact median of the valid, de-duplicated readings (rollup_daily);
--   - condition counts and held durations, for fields with a band that day
--     (conditions_daily; NULL otherwise).
-- Validity and duplicates as in stage_partials_1m.sql. The cond_* parameters are parallel
-- arrays (day, field, optimal min / max, critical below / above): the bands in force.
-- Time-weighted: a reading holds until the next reading, at most max_gap_seconds and never
-- past the end of its local day. with_medians / with_conditions switch the two halves off
-- when only one is wanted (conditions then only read the fields that have bands).
-- {daily_totals}, {reading_terms}: sources/postgres.py (shared with stage_daily_hours.sql).
WITH catalogue AS (
    SELECT *
    FROM unnest(CAST(:fields AS text[]), CAST(:lo AS float8[]), CAST(:hi AS float8[]))
         AS c (field, lo, hi)
),
ranges AS (
    SELECT *
    FROM unnest(CAST(:cond_day AS date[]), CAST(:cond_field AS text[]),
                CAST(:cond_opt_min AS float8[]), CAST(:cond_opt_max AS float8[]),
                CAST(:cond_crit_below AS float8[]), CAST(:cond_crit_above AS float8[]))
         AS k (day, field, opt_min, opt_max, crit_below, crit_above)
),
groups AS (
    SELECT r.{device}::text AS device,
           r.{field}::text AS field,
           (r.{time} AT TIME ZONE :tz)::date AS day,
           array_agg(r.{time}) AS ts,
           array_agg(r.{value}) AS vs
    FROM {raw_table} AS r
    WHERE r.{time} >= :start AND r.{time} < :end
      AND {shard}
      AND r.{field} = ANY (CASE WHEN :with_medians THEN CAST(:fields AS text[])
                                ELSE CAST(:cond_field AS text[]) END)
    GROUP BY 1, 2, 3
)
SELECT g.device, g.field, g.day,
       k.opt_min, k.opt_max, k.crit_below, k.crit_above,
       s.*
FROM groups AS g
JOIN catalogue AS c ON c.field = g.field
LEFT JOIN ranges AS k ON k.day = g.day AND k.field = g.field AND :with_conditions
CROSS JOIN LATERAL (
    SELECT {daily_totals}
    FROM (
        SELECT d.t, d.v,
               {reading_terms}
        FROM (
            SELECT x.t, avg(x.v) AS v
            FROM unnest(g.ts, g.vs) AS x (t, v)
            WHERE x.t <= :latest_allowed
              AND x.v >= c.lo AND x.v <= c.hi
            GROUP BY x.t
        ) AS d
    ) AS z
) AS s
WHERE s.reading_count > 0
  -- bad device names (stage_partials_1m.sql) are left out here too: never registered
  AND octet_length(g.device) BETWEEN 1 AND :max_name_bytes
  AND g.device !~ :bad_name_pattern
