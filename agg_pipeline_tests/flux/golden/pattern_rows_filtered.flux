// agg_pipeline {"bucket": "pattern_aggregates_daily", "kind": "pattern_rows", "measurement": "co_occurrence_daily", "start": "2026-11-22T00:00:00.000000Z", "stop": "2026-12-22T00:00:00.000000Z", "tags": {"device_pair": "light.a+switch \"b\" ${x}\\"}}
from(bucket: "pattern_aggregates_daily")
    |> range(start: 2026-11-22T00:00:00.000000Z, stop: 2026-12-22T00:00:00.000000Z)
    |> filter(fn: (r) => r._measurement == "co_occurrence_daily")
    |> filter(fn: (r) => r["device_pair"] == "light.a+switch \"b\" \${x}\\")
    |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
    |> yield(name: "rows")
