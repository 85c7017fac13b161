// agg_pipeline {"bucket": "water-quality", "kind": "sink_windows", "measurement": "water_quality_1m", "start": "2026-11-22T00:00:00.000000Z", "stop": "2026-11-22T01:00:00.000000Z"}
from(bucket: "water-quality")
    |> range(start: 2026-11-22T00:00:00.000000Z, stop: 2026-11-22T01:00:00.000000Z)
    |> filter(fn: (r) => r._measurement == "water_quality_1m")
    |> yield(name: "windows")
