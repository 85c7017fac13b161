-- stage_daily.sql's answer (same columns, same rows) from bi.hour_values instead of raw:
-- the valid, de-duplicated readings readings_1m kept per sensor-hour, in time order. Used
-- only when those hours are current (sources/postgres.py, _HOURS_CURRENT); each local
-- day is the union of its hours (a zone whose days do not start on a UTC hour never gets
-- here). Medians and held durations exactly as in stage_daily.sql; the reading after
-- each one is found from the hours' own order instead of a window over the sorted day.
-- {device} / {time} name the raw table's columns only so that _stage's {shard} (a hash
-- of r.{device}) applies here too.
WITH ranges AS (
    SELECT *
    FROM unnest(CAST(:cond_day AS date[]), CAST(:cond_field AS text[]),
                CAST(:cond_opt_min AS float8[]), CAST(:cond_opt_max AS float8[]),
                CAST(:cond_crit_below AS float8[]), CAST(:cond_crit_above AS float8[]))
         AS k (day, field, opt_min, opt_max, crit_below, crit_above)
),
groups AS (
    SELECT r.{device}::text AS device,
           r.hv_field AS field,
           r.hv_sensor AS sensor_id,
           (r.{time} AT TIME ZONE :tz)::date AS day,
           array_agg(r.{time}) AS hours
    FROM (
        SELECT dv.device_code AS {device}, s.field AS hv_field, hv.sensor_id AS hv_sensor,
               hv.hour_start AS {time}
        FROM bi.hour_values AS hv
        JOIN iot.sensors AS s ON s.id = hv.sensor_id
        JOIN iot.devices AS dv ON dv.id = s.device_id
        WHERE hv.hour_start >= :start AND hv.hour_start < :end
    ) AS r
    WHERE {shard}
      AND r.hv_field = ANY (CASE WHEN :with_medians THEN CAST(:fields AS text[])
                              ELSE CAST(:cond_field AS text[]) END)
    GROUP BY 1, 2, 3, 4
)
SELECT g.device, g.field, g.day,
       k.opt_min, k.opt_max, k.crit_below, k.crit_above,
       s.*
FROM groups AS g
LEFT JOIN ranges AS k ON k.day = g.day AND k.field = g.field AND :with_conditions
CROSS JOIN LATERAL (
    SELECT count(*) AS reading_count,
           CASE WHEN :with_medians
                THEN percentile_cont(0.5) WITHIN GROUP (ORDER BY z.v) END AS median,
           count(*) FILTER (WHERE z.optimal) AS optimal_count,
           count(*) FILTER (WHERE z.critical) AS critical_count,
           coalesce(sum(z.held), 0) AS covered_seconds,
           coalesce(sum(z.held) FILTER (WHERE z.optimal), 0) AS optimal_seconds,
           coalesce(sum(z.held) FILTER (WHERE z.critical), 0) AS critical_seconds,
           min(z.t) AS first_reading_at,
           max(z.t) AS last_reading_at
    FROM (
        SELECT x.t, x.v,
               x.v >= k.opt_min AND x.v <= k.opt_max AS optimal,
               x.v < k.crit_below OR x.v > k.crit_above AS critical,
               CASE WHEN k.field IS NOT NULL THEN extract(epoch FROM least(
                   x.t_next,
                   x.t + make_interval(secs => :max_gap_seconds),
                   ((g.day + 1)::timestamp AT TIME ZONE :tz)
               ) - x.t) END AS held
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
