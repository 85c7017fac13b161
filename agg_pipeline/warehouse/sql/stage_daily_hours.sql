-- stage_daily.sql's answer (same columns, same rows) from bi.hour_values instead of raw:
-- the valid, de-duplicated readings readings_1m kept per sensor-hour, in time order. Used
-- only when those hours are current (sources/postgres.py, _HOURS_CURRENT); each local
-- day is the union of its hours (a zone whose days do not start on a UTC hour never gets
-- here). Medians and held durations exactly as in stage_daily.sql, whose aggregate this
-- shares ({daily_totals}, {reading_terms}: sources/postgres.py); the reading after each
-- one is found from the hours' own order instead of a window over the sorted day.
-- {hour_groups}: the groups CTE, shared with stage_medians_hours.sql (sources/postgres.py).
WITH ranges AS (
    SELECT *
    FROM unnest(CAST(:cond_day AS date[]), CAST(:cond_field AS text[]),
                CAST(:cond_opt_min AS float8[]), CAST(:cond_opt_max AS float8[]),
                CAST(:cond_crit_below AS float8[]), CAST(:cond_crit_above AS float8[]))
         AS k (day, field, opt_min, opt_max, crit_below, crit_above)
),
{hour_groups}
SELECT g.device, g.field, g.day,
       k.opt_min, k.opt_max, k.crit_below, k.crit_above,
       s.*
FROM groups AS g
LEFT JOIN ranges AS k ON k.day = g.day AND k.field = g.field AND :with_conditions
CROSS JOIN LATERAL (
    SELECT {daily_totals}
    FROM (
        SELECT x.t, x.v,
               {reading_terms}
        FROM (
            -- Each hour's next reading after its last: the next kept hour's first (the
            -- hours are disjoint and each is in time order, so no sort of the day).
            SELECT hv.times, hv.vals,
                   lead(hv.times[1]) OVER (ORDER BY hv.hour_start) AS next_first
            FROM bi.hour_values AS hv
            WHERE hv.sensor_id = g.sensor_id AND hv.hour_start = ANY (g.hours)
        ) AS h
        -- t_next: the reading after t (NULL after the day's last: least() skips it).
        CROSS JOIN LATERAL unnest(h.times, h.vals, h.times[2:] || h.next_first)
            AS x (t, v, t_next)
    ) AS z
) AS s
WHERE s.reading_count > 0
