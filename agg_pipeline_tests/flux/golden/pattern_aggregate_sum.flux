// agg_pipeline {"bucket": "pattern_aggregates_daily", "how": "sum", "key": "entity_id", "kind": "pattern_aggregate", "measurement": "time_based_daily", "metric": "occurrences", "start": "2026-11-22T00:00:00.000000Z", "stop": "2027-02-20T00:00:00.000000Z"}
from(bucket: "pattern_aggregates_daily")
    |> range(start: 2026-11-22T00:00:00.000000Z, stop: 2027-02-20T00:00:00.000000Z)
    |> filter(fn: (r) => r._measurement == "time_based_daily")
    |> filter(fn: (r) => r._field == "occurrences")
    |> toFloat()
    |> group(columns: ["entity_id"])
    |> sum()
    |> yield(name: "aggregate")
