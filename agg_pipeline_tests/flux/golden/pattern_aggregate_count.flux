// agg_pipeline {"bucket": "pattern_aggregates_daily", "how": "count", "key": "device_pair", "kind": "pattern_aggregate", "measurement": "co_occurrence_daily", "metric": "co_occurrence_count", "start": "2026-11-22T00:00:00.000000Z", "stop": "2026-11-29T00:00:00.000000Z"}
from(bucket: "pattern_aggregates_daily")
    |> range(start: 2026-11-22T00:00:00.000000Z, stop: 2026-11-29T00:00:00.000000Z)
    |> filter(fn: (r) => r._measurement == "co_occurrence_daily")
    |> filter(fn: (r) => r._field == "co_occurrence_count")
    |> toFloat()
    |> group(columns: ["device_pair"])
    |> count()
    |> yield(name: "aggregate")
