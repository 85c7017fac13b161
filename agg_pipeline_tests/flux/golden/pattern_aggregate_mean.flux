// agg_pipeline {"bucket": "pattern_aggregates_daily", "how": "mean", "key": "entity_id", "kind": "pattern_aggregate", "measurement": "duration_daily", "metric": "avg_duration_seconds", "start": "2026-11-22T00:00:00.000000Z", "stop": "2026-11-29T00:00:00.000000Z"}
from(bucket: "pattern_aggregates_daily")
    |> range(start: 2026-11-22T00:00:00.000000Z, stop: 2026-11-29T00:00:00.000000Z)
    |> filter(fn: (r) => r._measurement == "duration_daily")
    |> filter(fn: (r) => r._field == "avg_duration_seconds")
    |> toFloat()
    |> group(columns: ["entity_id"])
    |> mean()
    |> yield(name: "aggregate")
