-- stage_medians.sql's answer (same columns, same rows) from bi.hour_values instead of raw:
-- exact medians per (device, field, bucket) over the valid, de-duplicated readings
-- readings_1m kept per sensor-hour. Used only when those hours are current
-- (sources/postgres.py, _HOURS_CURRENT). Each group's values are gathered from its hours
-- and sorted on their own (measured for a week of 3 devices x 5 fields at 1 Hz: 3.6 s,
-- against 58.6 s for the same medians read from raw and de-duplicated, same load).
-- {bucket} is an expression of r.{time} (here: the hour's start; an hour lies in one
-- bucket, as a zone whose days do not start on a UTC hour never gets here).
WITH groups AS (
    SELECT r.{device}::text AS device,
           r.hv_field AS field,
           r.hv_sensor AS sensor_id,
           {bucket} AS bucket,
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
      AND r.hv_field = ANY (CAST(:fields AS text[]))
    GROUP BY 1, 2, 3, 4
)
SELECT g.device, g.field, g.bucket, m.n, m.median
FROM groups AS g
CROSS JOIN LATERAL (
    SELECT count(*) AS n,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY x.v) AS median
    FROM bi.hour_values AS h
    CROSS JOIN LATERAL unnest(h.vals) AS x (v)
    WHERE h.sensor_id = g.sensor_id AND h.hour_start = ANY (g.hours)
) AS m
WHERE m.n > 0
