// agg_pipeline {"bucket": "pattern_aggregates_daily", "kind": "pattern_rows", "measurement": "time_based_daily", "start": "2026-11-22T00:00:00.000000Z", "stop": "2026-11-29T00:00:00.000000Z", "tags": {}}
from(bucket: "pattern_aggregates_daily")
    |> range(start: 2026-11-22T00:00:00.000000Z, stop: 2026-11-29T00:00:00.000000Z)
    |> filter(fn: (r) => r._measurement == "time_based_daily")
    |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
    |> yield(name: "rows")
