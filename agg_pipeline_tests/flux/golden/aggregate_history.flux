// agg_pipeline {"bucket": "hydroponics_hourly", "device_tag": "sensor_tag", "fields": ["ph", "ec"], "kind": "aggregate_history", "measurement": "sensor_readings", "start": "1970-01-01T00:00:00.000000Z", "stop": "2026-11-22T00:00:00.000000Z"}
data = from(bucket: "hydroponics_hourly")
    |> range(start: 1970-01-01T00:00:00.000000Z, stop: 2026-11-22T00:00:00.000000Z)
    |> filter(fn: (r) => r._measurement == "sensor_readings")
    |> filter(fn: (r) => r._field == "ph" or r._field == "ec")
data
    |> filter(fn: (r) => r.stat_type == "mean")
    |> keep(columns: ["_time", "_field", "_value", "sensor_tag"])
    |> yield(name: "mean")
data
    |> filter(fn: (r) => r.stat_type == "min")
    |> keep(columns: ["_time", "_field", "_value", "sensor_tag"])
    |> yield(name: "min")
data
    |> filter(fn: (r) => r.stat_type == "max")
    |> keep(columns: ["_time", "_field", "_value", "sensor_tag"])
    |> yield(name: "max")
data
    |> filter(fn: (r) => r.stat_type == "count")
    |> keep(columns: ["_time", "_field", "_value", "sensor_tag"])
    |> yield(name: "count")
