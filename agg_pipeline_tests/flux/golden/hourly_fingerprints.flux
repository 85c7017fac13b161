// agg_pipeline {"bucket": "hydroponics", "hour_offset": 0.0, "kind": "hourly_fingerprints", "measurement": "sensor_readings", "start": "2026-11-15T00:00:00.000000Z", "stop": "2026-11-22T00:00:00.000000Z"}
data = from(bucket: "hydroponics")
    |> range(start: 2026-11-15T00:00:00.000000Z, stop: 2026-11-22T00:00:00.000000Z)
    |> filter(fn: (r) => r._measurement == "sensor_readings")
data
    |> aggregateWindow(every: 1h, fn: count, createEmpty: false, timeSrc: "_start", offset: 0s)
    |> yield(name: "count")
data
    |> window(every: 1h, offset: 0s)
    |> last()
    |> yield(name: "last")
