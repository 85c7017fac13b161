// agg_pipeline {"bands": {}, "bounds": {"ec": [0.0, 10.0], "ph": [0.0, 14.0]}, "bucket": "water-quality", "device_tag": "sensor_tag", "kind": "period_summary", "latest_allowed": "2026-11-30T00:00:00.000000Z", "max_gap_seconds": 300.0, "measurement": "water_quality", "start": "2026-11-22T00:00:00.000000Z", "stop": "2026-11-29T00:00:00.000000Z", "with_medians": true}
data = from(bucket: "water-quality")
    |> range(start: 2026-11-22T00:00:00.000000Z, stop: 2026-11-29T00:00:00.000000Z)
    |> filter(fn: (r) => r._measurement == "water_quality")
    |> filter(fn: (r) => r._field == "ph" or r._field == "ec")
valid = data
    |> filter(fn: (r) => (r._field == "ph" and r._value >= 0.0 and r._value <= 14.0) or (r._field == "ec" and r._value >= 0.0 and r._value <= 10.0))
valid
    |> count()
    |> yield(name: "count")
valid
    |> median(method: "exact_mean")
    |> yield(name: "median")
