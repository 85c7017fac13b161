"""Flux query text for the InfluxDB source. Pure functions: parameters in, Flux out.

Every query aggregates inside InfluxDB - ``aggregateWindow`` count / mean / min / max
(pushed down to the storage engine), stddev, exact medians, per-class counts and held
durations - so only aggregated rows travel back. A query has several ``yield``s, one per
statistic, and is answered in one HTTP response.

Each query starts with a comment naming it and its parameters (``// agg_pipeline {...}``):
harmless to InfluxDB, it says in the server's query log who asked, and it lets a protocol
test server answer the query exactly.

Only validated text reaches a query: bucket, measurement, tag and field names from the
catalogue (checked against a plain pattern here again, then written as Flux string
literals), numbers, durations and timestamps formatted here.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta

_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,62}$")
ANNOTATION = "// agg_pipeline "


def string(value: str) -> str:
    """A Flux string literal for a validated name."""
    if not _SAFE.match(value):
        raise ValueError(f"refusing to put {value!r} in a Flux query")
    return json.dumps(value)


def number(value: float) -> str:
    """A Flux float literal (Flux compares floats with floats only)."""
    if not math.isfinite(value):
        raise ValueError("Flux numbers must be finite")
    return repr(float(value))


def time(value: datetime) -> str:
    """An RFC 3339 time literal in UTC, to the microsecond."""
    if value.tzinfo is None:
        raise ValueError("naive datetime in a Flux query")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def duration(value: timedelta) -> str:
    """A Flux duration literal, whole seconds (``0s`` allowed)."""
    seconds = value.total_seconds()
    if seconds != int(seconds):
        raise ValueError(f"durations are whole seconds here, not {seconds}")
    return f"{int(seconds)}s"


def header(kind: str, **params: object) -> str:
    def plain(v: object) -> object:
        if isinstance(v, datetime):
            return time(v)
        if isinstance(v, timedelta):
            return v.total_seconds()
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return v

    body = {"kind": kind, **{k: plain(v) for k, v in params.items()}}
    return ANNOTATION + json.dumps(body, sort_keys=True) + "\n"


def parse_header(query: str) -> dict:
    """The parameters a query was built from (for test servers and logs)."""
    first = query.split("\n", 1)[0]
    if not first.startswith(ANNOTATION):
        raise ValueError("not an agg_pipeline query")
    return json.loads(first[len(ANNOTATION) :])


def _source(
    bucket: str, measurement: str, fields: list[str] | None, start: datetime, stop: datetime
) -> str:
    """``data``: the measurement's points in [start, stop), of ``fields`` (None: all)."""
    out = (
        f"data = from(bucket: {string(bucket)})\n"
        f"    |> range(start: {time(start)}, stop: {time(stop)})\n"
        f"    |> filter(fn: (r) => r._measurement == {string(measurement)})\n"
    )
    if fields is None:
        return out
    field_filter = " or ".join(f"r._field == {string(f)}" for f in fields)
    return out + f"    |> filter(fn: (r) => {field_filter})\n"


def _valid(bounds: dict[str, tuple[float, float]]) -> str:
    # A field's physical bounds; NaN fails every comparison and +/-inf lies outside finite
    # bounds, so both are excluded with the out-of-range values.
    clauses = " or ".join(
        f"(r._field == {string(f)} and r._value >= {number(lo)} and r._value <= {number(hi)})"
        for f, (lo, hi) in bounds.items()
    )
    return f"valid = data\n    |> filter(fn: (r) => {clauses})\n"


# median()'s default is an estimate (t-digest); exact_mean is what percentile_cont(0.5)
# computes: the middle value, or the mean of the two middle values.
_EXACT_MEDIAN = (
    "exactMedian = (column, tables=<-) =>\n"
    '    tables |> median(method: "exact_mean", column: column)\n'
)


def partials_1m(
    bucket: str,
    measurement: str,
    bounds: dict[str, tuple[float, float]],
    start: datetime,
    stop: datetime,
    hour_offset: timedelta,
) -> str:
    """Per series and 1-minute window (labelled by its start): count, mean, min, max,
    stddev, first and last reading time; per series and hour: the exact median; per
    series: all points read (valid or not, to count the rejected ones). One query.

    ``hour_offset``: where hours start relative to UTC hours (non-zero in zones like
    Asia/Kolkata), so hour medians line up with the hourly partitions.
    """
    params = dict(
        bucket=bucket,
        measurement=measurement,
        bounds=bounds,
        start=start,
        stop=stop,
        hour_offset=hour_offset,
    )
    stats = "".join(
        f"valid\n    |> aggregateWindow(every: 1m, fn: {fn}, createEmpty: false, "
        f'timeSrc: "_start")\n    |> yield(name: "{fn}")\n'
        for fn in ("count", "mean", "min", "max", "stddev")
    )
    selectors = "".join(
        f'valid\n    |> window(every: 1m)\n    |> {fn}()\n    |> yield(name: "{fn}")\n'
        for fn in ("first", "last")
    )
    return (
        header("partials_1m", **params)
        + _EXACT_MEDIAN
        + _source(bucket, measurement, list(bounds), start, stop)
        + _valid(bounds)
        + stats
        + selectors
        + "valid\n    |> aggregateWindow(every: 1h, fn: exactMedian, createEmpty: false, "
        f'timeSrc: "_start", offset: {duration(hour_offset)})\n'
        '    |> yield(name: "hour_median")\n' + 'data\n    |> count()\n    |> yield(name: "rows")\n'
    )


def _classify(bands: dict[str, tuple[float, float, float, float]]) -> str:
    parts = [
        f"if r._field == {string(f)} then (if r._value >= {number(omin)} and r._value <= "
        f'{number(omax)} then "optimal" else if r._value < {number(cb)} or r._value > '
        f'{number(ca)} then "critical" else "acceptable")'
        for f, (omin, omax, cb, ca) in bands.items()
    ]
    return " else ".join(parts) + ' else "none"'


def period_summary(
    bucket: str,
    measurement: str,
    device_tag: str,
    bounds: dict[str, tuple[float, float]],
    bands: dict[str, tuple[float, float, float, float]],
    start: datetime,
    stop: datetime,
    latest_allowed: datetime,
    max_gap_seconds: float,
    with_medians: bool = True,
    tags: tuple[str, ...] = (),
) -> str:
    """One period (a local day, or a week) of each series: the valid points' count and
    exact median; and, for fields with a condition band (optimal min / max, critical
    below / above), per class the points and the time they held.

    A point holds until the next point of its series, at most ``max_gap_seconds``, and
    never past the period's end: ``events.duration`` measures the time to the next record
    (for the last record, to ``_stop``, the period's end). Points stamped after
    ``latest_allowed`` (the future) are not read. ``tags``: the carried tags, kept in the
    per-class grouping so each tag set is counted on its own.
    """
    params = dict(
        bucket=bucket,
        measurement=measurement,
        device_tag=device_tag,
        bounds=bounds,
        bands=bands,
        start=start,
        stop=stop,
        latest_allowed=latest_allowed,
        max_gap_seconds=max_gap_seconds,
        with_medians=with_medians,
    )
    if tags:  # only then: the header of a catalogue without carried tags is unchanged
        params["tags"] = list(tags)
    fields = list(bounds) if with_medians else [f for f in bounds if f in bands]
    out = header("period_summary", **params)
    if bands:
        out += 'import "contrib/tomhollingworth/events"\n\n'
    out += _source(bucket, measurement, fields, start, stop)
    if latest_allowed < stop:
        # The open period: keep _stop at the period's end (for held durations) and drop
        # future points by time instead.
        out += f"    |> filter(fn: (r) => r._time <= {time(latest_allowed)})\n"
    out += _valid({f: bounds[f] for f in fields})
    if with_medians:
        out += (
            'valid\n    |> count()\n    |> yield(name: "count")\n'
            'valid\n    |> median(method: "exact_mean")\n    |> yield(name: "median")\n'
        )
    if not bands:
        return out
    in_band = " or ".join(f"r._field == {string(f)}" for f in bands)
    gap_ms = number(max_gap_seconds * 1000.0)
    return out + (
        f"valid\n    |> filter(fn: (r) => {in_band})\n"
        '    |> events.duration(unit: 1ms, columnName: "held_ms", stopColumn: "_stop")\n'
        f"    |> map(fn: (r) => ({{r with class: {_classify(bands)}, held: "
        f"(if float(v: r.held_ms) < {gap_ms} then float(v: r.held_ms) else {gap_ms}) "
        "/ 1000.0}))\n"
        f"    |> group(columns: [{', '.join(string(c) for c in (device_tag, *tags))}, "
        '"_field", "class"])\n'
        "    |> reduce(identity: {n: 0, held: 0.0}, fn: (r, accumulator) => "
        "({n: accumulator.n + 1, held: accumulator.held + r.held}))\n"
        '    |> yield(name: "classes")\n'
    )


def hourly_fingerprints(
    bucket: str, measurement: str, start: datetime, stop: datetime, hour_offset: timedelta
) -> str:
    """Per series and hour: the points and the last point's time - the late-data
    observation (a changed fingerprint of a settled hour means late points)."""
    return (
        header(
            "hourly_fingerprints",
            bucket=bucket,
            measurement=measurement,
            start=start,
            stop=stop,
            hour_offset=hour_offset,
        )
        + _source(bucket, measurement, None, start, stop)
        + "data\n    |> aggregateWindow(every: 1h, fn: count, createEmpty: false, "
        f'timeSrc: "_start", offset: {duration(hour_offset)})\n    |> yield(name: "count")\n'
        f"data\n    |> window(every: 1h, offset: {duration(hour_offset)})\n    |> last()\n"
        '    |> yield(name: "last")\n'
    )


HISTORY_STATS = ("mean", "min", "max", "count")


def aggregate_history(
    bucket: str,
    device_tag: str,
    fields: list[str],
    start: datetime,
    stop: datetime,
    measurement: str | None = None,
) -> str:
    """The old downsampling tasks' points in an aggregate bucket (``<bucket>_hourly``):
    one point per series, window and statistic, told apart by the ``stat_type`` tag the
    old tasks set; one ``yield`` per statistic."""
    out = header(
        "aggregate_history",
        bucket=bucket,
        device_tag=device_tag,
        fields=fields,
        start=start,
        stop=stop,
        measurement=measurement,
    )
    out += (
        f"data = from(bucket: {string(bucket)})\n"
        f"    |> range(start: {time(start)}, stop: {time(stop)})\n"
    )
    if measurement is not None:
        out += f"    |> filter(fn: (r) => r._measurement == {string(measurement)})\n"
    field_filter = " or ".join(f"r._field == {string(f)}" for f in fields)
    out += f"    |> filter(fn: (r) => {field_filter})\n"
    string(device_tag)  # validated like every name before it is written into the query
    keep = json.dumps(["_time", "_field", "_value", device_tag])
    for stat in HISTORY_STATS:
        out += (
            f"data\n    |> filter(fn: (r) => r.stat_type == {string(stat)})\n"
            f"    |> keep(columns: {keep})\n"
            f"    |> yield(name: {string(stat)})\n"
        )
    return out


def text(value: str) -> str:
    """A Flux string literal for a value from a caller (an entity id, a device pair):
    anything printable, escaped as Flux needs (``\\``, ``"``, ``${``), control characters
    refused."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"refusing control characters in a Flux string: {value!r}")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'


def sink_windows(bucket: str, measurement: str, start: datetime, stop: datetime) -> str:
    """The sink's (or the old tasks') window points of ``measurement`` (``<m>_1m``) in
    [start, stop): every stat_type and field, as a Grafana panel reads them."""
    return (
        header("sink_windows", bucket=bucket, measurement=measurement, start=start, stop=stop)
        + f"from(bucket: {string(bucket)})\n"
        f"    |> range(start: {time(start)}, stop: {time(stop)})\n"
        f"    |> filter(fn: (r) => r._measurement == {string(measurement)})\n"
        '    |> yield(name: "windows")\n'
    )


def _pattern_source(
    bucket: str, measurement: str, start: datetime, stop: datetime, tags: dict[str, str]
) -> str:
    out = (
        f"from(bucket: {string(bucket)})\n"
        f"    |> range(start: {time(start)}, stop: {time(stop)})\n"
        f"    |> filter(fn: (r) => r._measurement == {string(measurement)})\n"
    )
    for tag, value in sorted(tags.items()):
        out += f"    |> filter(fn: (r) => r[{string(tag)}] == {text(value)})\n"
    return out


def pattern_rows(
    bucket: str, measurement: str, start: datetime, stop: datetime, tags: dict[str, str]
) -> str:
    """A detector's daily aggregates in [start, stop), optionally of one tag value each
    (entity_id, device_pair, area_id): one row per point, its fields as columns (pivot),
    as the old PatternAggregateClient's ``query_*_daily`` read them."""
    return (
        header(
            "pattern_rows",
            bucket=bucket,
            measurement=measurement,
            start=start,
            stop=stop,
            tags=tags,
        )  # fmt: skip
        + _pattern_source(bucket, measurement, start, stop, tags)
        + '    |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        '    |> yield(name: "rows")\n'
    )


PATTERN_AGGREGATES = ("sum", "mean", "count")


def pattern_aggregate(
    bucket: str, measurement: str, key: str, metric: str, how: str, start: datetime,
    stop: datetime,
) -> str:  # fmt: skip
    """``how`` (sum, mean, count) of field ``metric`` per ``key`` tag over [start, stop),
    computed in InfluxDB: one row per key comes back."""
    if how not in PATTERN_AGGREGATES:
        raise ValueError(f"how must be one of {PATTERN_AGGREGATES}, not {how!r}")
    return (
        header(
            "pattern_aggregate",
            bucket=bucket,
            measurement=measurement,
            key=key,
            metric=metric,
            how=how,
            start=start,
            stop=stop,
        )  # fmt: skip
        + _pattern_source(bucket, measurement, start, stop, {})
        + f"    |> filter(fn: (r) => r._field == {string(metric)})\n"
        "    |> toFloat()\n"
        f"    |> group(columns: [{string(key)}])\n"
        f"    |> {how}()\n"
        '    |> yield(name: "aggregate")\n'
    )
