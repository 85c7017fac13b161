// agg_pipeline {"bounds": {"ec": [0.0, 10.0], "ph": [0.0, 14.0]}, "bucket": "hydroponics", "hour_offset": 0.0, "kind": "partials_1m", "measurement": "sensor_readings", "start": "2026-11-22T00:00:00.000000Z", "stop": "2026-11-22T01:00:00.000000Z"}
exactMedian = (column, tables=<-) =>
    tables |> median(method: "exact_mean", column: column)
data = from(bucket: "hydroponics")
    |> range(start: 2026-11-22T00:00:00.000000Z, stop: 2026-11-22T01:00:00.000000Z)
    |> filter(fn: (r) => r._measurement == "sensor_readings")
    |> filter(fn: (r) => r._field == "ph" or r._field == "ec")
valid = data
    |> filter(fn: (r) => (r._field == "ph" and r._value >= 0.0 and r._value <= 14.0) or (r._field == "ec" and r._value >= 0.0 and r._value <= 10.0))
valid
    |> aggregateWindow(every: 1m, fn: count, createEmpty: false, timeSrc: "_start")
    |> yield(name: "count")
valid
    |> aggregateWindow(every: 1m, fn: mean, createEmpty: false, timeSrc: "_start")
    |> yield(name: "mean")
valid
    |> aggregateWindow(every: 1m, fn: min, createEmpty: false, timeSrc: "_start")
    |> yield(name: "min")
valid
    |> aggregateWindow(every: 1m, fn: max, createEmpty: false, timeSrc: "_start")
    |> yield(name: "max")
valid
    |> aggregateWindow(every: 1m, fn: stddev, createEmpty: false, timeSrc: "_start")
    |> yield(name: "stddev")
valid
    |> window(every: 1m)
    |> first()
    |> yield(name: "first")
valid
    |> window(every: 1m)
    |> last()
    |> yield(name: "last")
valid
    |> aggregateWindow(every: 1h, fn: exactMedian, createEmpty: false, timeSrc: "_start", offset: 0s)
    |> yield(name: "hour_median")
data
    |> count()
    |> yield(name: "rows")
