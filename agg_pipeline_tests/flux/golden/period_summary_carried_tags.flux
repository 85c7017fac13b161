// agg_pipeline {"bands": {"ec": [1.2, 2.4, 0.5, 3.5], "ph": [5.5, 6.5, 5.0, 7.0]}, "bounds": {"ec": [0.0, 10.0], "ph": [0.0, 14.0]}, "bucket": "water-quality", "device_tag": "sensor_tag", "kind": "period_summary", "latest_allowed": "2026-11-24T00:00:00.000000Z", "max_gap_seconds": 300.0, "measurement": "water_quality", "start": "2026-11-22T00:00:00.000000Z", "stop": "2026-11-23T00:00:00.000000Z", "tags": ["site", "depth"], "with_medians": true}
import "contrib/tomhollingworth/events"

data = from(bucket: "water-quality")
    |> range(start: 2026-11-22T00:00:00.000000Z, stop: 2026-11-23T00:00:00.000000Z)
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
valid
    |> filter(fn: (r) => r._field == "ph" or r._field == "ec")
    |> events.duration(unit: 1ms, columnName: "held_ms", stopColumn: "_stop")
    |> map(fn: (r) => ({r with class: if r._field == "ph" then (if r._value >= 5.5 and r._value <= 6.5 then "optimal" else if r._value < 5.0 or r._value > 7.0 then "critical" else "acceptable") else if r._field == "ec" then (if r._value >= 1.2 and r._value <= 2.4 then "optimal" else if r._value < 0.5 or r._value > 3.5 then "critical" else "acceptable") else "none", held: (if float(v: r.held_ms) < 300000.0 then float(v: r.held_ms) else 300000.0) / 1000.0}))
    |> group(columns: ["sensor_tag", "site", "depth", "_field", "class"])
    |> reduce(identity: {n: 0, held: 0.0}, fn: (r, accumulator) => ({n: accumulator.n + 1, held: accumulator.held + r.held}))
    |> yield(name: "classes")
