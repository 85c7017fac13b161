"""Writing back to InfluxDB in the shape the replaced systems wrote.

- 1m / 5m windows (the old Flux tasks ``aggregate_1m_mean`` ...): measurement
  ``<measurement>_1m`` / ``_5m``, tags ``<device tag>``, the carried tags
  (``source.tags``) and ``stat_type`` = mean | min | max | count, one field per catalogue
  field (count as an integer), stamped at the window's end - what the old tasks'
  ``aggregateWindow`` stamped (``_stop``), so old and new points line up - or its start
  (``influx_sink.window_time``). Points are keyed by series and time, so re-writing a
  window overwrites the same points (and an old task's point of that window): idempotent.
- Daily pattern aggregates (the old PatternAggregateClient): measurements
  ``time_based_daily`` ..., tag ``date`` plus the detector's key tags, lists and maps as
  JSON strings, stamped at the day's midnight UTC (the old client stamped the write time,
  so every re-run added a point; a fixed time makes re-runs overwrite).

PostgreSQL stays the system of record: the sink runs after the warehouse transaction
committed, and a failed sink write fails the run (Dagster retries it; the warehouse
write is idempotent too).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

import sqlalchemy as sa
from pydantic import BaseModel

from agg_pipeline.config.catalogue import Catalogue, InfluxSink
from agg_pipeline.core import hierarchy
from agg_pipeline.core.windows import Window
from agg_pipeline.influx import flux, series
from agg_pipeline.influx.client import InfluxError, InfluxResource

STATS = ("mean", "min", "max", "count")
# Measurement suffix -> (table, window length in seconds), from the hierarchy.
_LEVELS = {
    suffix: (level.table, int(level.step.total_seconds()))
    for suffix, level in hierarchy.sink_levels().items()
    if level.step is not None
}


# ------------------------------------------------------------------------ line protocol
def tag_value(value: str) -> str:
    """Escape a tag key or value (commas, equals signs and spaces)."""
    if "\n" in value or not value:
        raise ValueError(f"unwritable InfluxDB tag value {value!r}")
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def field_value(value: object) -> str | None:
    """A line-protocol field value; None for values InfluxDB cannot store (NaN, inf)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def line(measurement: str, tags: dict[str, str], fields: dict[str, object], ts: int) -> str | None:
    """One point; tags sorted by key (what InfluxDB recommends), None without fields."""
    rendered = [(k, field_value(v)) for k, v in fields.items() if v is not None]
    body = ",".join(f"{tag_value(k)}={v}" for k, v in rendered if v is not None)
    if not body:
        return None
    tag_part = "".join(f",{tag_value(k)}={tag_value(v)}" for k, v in sorted(tags.items()))
    return f"{tag_value(measurement)}{tag_part} {body} {ts}"


# ---------------------------------------------------------------------------- windows
_WINDOWS = """
SELECT dv.device_code AS device, s.field, t.window_start, t.mean_value AS mean,
       t.min_value AS min, t.max_value AS max, t.sample_count AS count
FROM {table} AS t
JOIN iot.sensors AS s ON s.id = t.sensor_id
JOIN iot.devices AS dv ON dv.id = s.device_id
WHERE t.window_start >= :s AND t.window_start < :e
ORDER BY t.window_start, dv.device_code, s.field
"""


def window_lines(
    rows: Iterable[sa.Row], sink: InfluxSink, device_tag: str, level: str, carried: bool = False
) -> list[str]:
    """Line protocol for window rows (device, field, window_start, mean, min, max, count):
    one point per (device, stat_type, window) carrying every field, stamped at the
    window's end (``window_time: stop``, aggregateWindow's ``_stop``) or start.
    ``carried``: device codes spell tag sets (``influx/series.py``), written as tags."""
    seconds = _LEVELS[level][1]
    shift = seconds if sink.window_time == "stop" else 0
    tag_sets: dict[str, dict[str, str]] = {}
    points: dict[tuple[str, str, int], dict[str, object]] = {}
    for r in rows:
        ts = int(r.window_start.timestamp()) + shift
        for stat in STATS:
            value = getattr(r, stat)
            value = int(value) if stat == "count" else float(value)
            points.setdefault((r.device, stat, ts), {})[r.field] = value
    measurement = f"{sink.measurement}_{level}"
    out = []
    for (device, stat, ts), fields in sorted(points.items(), key=lambda kv: (kv[0][2], kv[0][:2])):
        if device not in tag_sets:
            name, other = series.split(device) if carried else (device, {})
            tag_sets[device] = {**other, device_tag: name}
        rendered = line(measurement, {**tag_sets[device], "stat_type": stat}, fields, ts)
        if rendered:
            out.append(rendered)
    return out


def device_tag(catalogue: Catalogue) -> str:
    src = catalogue.source
    return getattr(src, "device_tag", None) or "sensor_tag"


def carried_tags(catalogue: Catalogue) -> tuple[str, ...]:
    """The raw series' other tags the sink writes back (``source.tags``)."""
    return getattr(catalogue.source, "tags", ())


_ENSURED: set[tuple[str, str]] = set()


def ensure_buckets(
    influx: InfluxResource, sink: InfluxSink, apply: bool = False, cached: bool = True
) -> dict[str, str]:
    """Create the sink's buckets (with their retention) unless they exist, and report -
    with ``apply`` correct - an existing bucket whose retention differs (``ensure_bucket``).
    ``cached``: once per process (the writes call this before every write)."""
    wanted = [(sink.bucket, sink.retention_days)]
    if sink.patterns_bucket:
        wanted.append((sink.patterns_bucket, sink.patterns_retention_days))
    out = {}
    for bucket, days in wanted:
        key = (influx.url or "", bucket)
        if cached and key in _ENSURED:
            out[bucket] = "checked"
            continue
        out[bucket] = influx.ensure_bucket(bucket, days, apply=apply)
        _ENSURED.add(key)
    return out


def _require(influx: InfluxResource | None, catalogue: Catalogue) -> InfluxResource:
    if influx is None or not influx.enabled:
        raise InfluxError(
            f"catalogue {catalogue.name!r} has an influx_sink, but InfluxDB is not configured: "
            "set INFLUXDB_URL, INFLUXDB_TOKEN and INFLUXDB_ORG (or remove influx_sink)"
        )
    return influx


def write_windows(
    engine: sa.Engine,
    influx: InfluxResource | None,
    catalogue: Catalogue,
    level: str,
    window: Window,
) -> int | None:
    """Write ``level`` ("1m" / "5m") windows in ``window`` to the sink; None if no sink."""
    sink = catalogue.influx_sink
    if sink is None or not getattr(sink, f"readings_{level}"):
        return None
    influx = _require(influx, catalogue)
    ensure_buckets(influx, sink)
    table = _LEVELS[level][0]
    written = 0
    # A day at a time: bounded memory for a long backfill.
    start = window.start
    while start < window.end:
        end = min(window.end, start + timedelta(days=1))
        with engine.connect() as conn:
            rows = conn.execute(sa.text(_WINDOWS.format(table=table)), {"s": start, "e": end})
            lines = window_lines(
                rows, sink, device_tag(catalogue), level, bool(carried_tags(catalogue))
            )
        written += influx.write_lines(sink.bucket, lines, precision="s") if lines else 0
        start = end
    return written


# --------------------------------------------------------------------------- patterns
class PatternDetector(Protocol):
    """What the sink reads of a detector (serving.patterns.Detector, a layer above)."""

    @property
    def model(self) -> type[BaseModel]: ...
    @property
    def measurement(self) -> str: ...
    @property
    def tags(self) -> tuple[str, ...]: ...
    @property
    def json_fields(self) -> tuple[str, ...]: ...


def pattern_lines(det: PatternDetector, rows: list[dict]) -> list[str]:
    """Line protocol for one detector's daily aggregates (validated model dicts)."""
    out = []
    for row in rows:
        model = det.model.model_validate(row)
        data = model.model_dump()
        day: date = data.pop("day")
        tags = {"date": day.isoformat(), **{t: str(data.pop(t)) for t in det.tags}}
        fields = {k: (json.dumps(v) if k in det.json_fields else v) for k, v in data.items()}
        ts = int(datetime.combine(day, datetime.min.time(), UTC).timestamp())
        rendered = line(det.measurement, tags, fields, ts)
        if rendered:
            out.append(rendered)
    return out


def write_patterns(
    influx: InfluxResource | None, catalogue: Catalogue, det: PatternDetector, rows: list[dict]
) -> int | None:
    sink = catalogue.influx_sink
    if sink is None or not sink.patterns_bucket:
        return None
    influx = _require(influx, catalogue)
    ensure_buckets(influx, sink)
    lines = pattern_lines(det, rows)
    return influx.write_lines(sink.patterns_bucket, lines, precision="s") if lines else 0


# ---------------------------------------------------------------------------- compare
@dataclass
class Comparison:
    """The sink measurement's points in InfluxDB against the windows in PostgreSQL."""

    level: str
    same: int = 0
    differing: int = 0
    only_influx: int = 0  # a point at a time / series PostgreSQL has no window for
    only_postgres: int = 0  # a window value not in InfluxDB (not written yet; old: count)
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No point that disagrees with PostgreSQL, and none at a shifted time."""
        return self.differing == 0 and self.only_influx == 0

    def _note(self, text: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(text)


def _expected(rows: Iterable[sa.Row], shift: int, carried: bool) -> dict[tuple, float]:
    out = {}
    for r in rows:
        name, tags = series.split(r.device) if carried else (r.device, {})
        ident = (name, tuple(sorted(tags.items())))
        ts = int(r.window_start.timestamp()) + shift
        for stat in STATS:
            out[(ident, stat, ts, r.field)] = float(getattr(r, stat))
    return out


def compare_windows(
    engine: sa.Engine, influx: InfluxResource, catalogue: Catalogue, level: str, window: Window
) -> Comparison:
    """Every ``<measurement>_<level>`` point in ``window`` (old tasks' or the sink's) against
    the PostgreSQL window it should equal: same series, same time (``window_time``), same
    value (relative 1e-9). A point with no window - e.g. an old point one window off - is
    ``only_influx``."""
    sink = catalogue.influx_sink
    if sink is None:
        raise InfluxError(f"catalogue {catalogue.name!r} has no influx_sink to compare")
    seconds = _LEVELS[level][1]
    shift = seconds if sink.window_time == "stop" else 0
    carried = carried_tags(catalogue)
    tag = device_tag(catalogue)
    back = timedelta(seconds=shift)  # the windows whose stamp falls in `window`
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(_WINDOWS.format(table=_LEVELS[level][0])),
            {"s": window.start - back, "e": window.end - back},
        )
        expected = _expected(rows, shift, bool(carried))
    frames = influx.query_frames(
        flux.sink_windows(sink.bucket, f"{sink.measurement}_{level}", window.start, window.end)
    )
    points = frames.get("windows")
    out = Comparison(level)
    seen = set()
    if points is not None and not points.empty:
        present = [t for t in carried if t in points]
        for p in points.to_dict("records"):
            tags = tuple(sorted((t, str(p[t])) for t in present if str(p[t]) not in ("", "nan")))
            ts = int(p["_time"].timestamp())
            key = ((str(p[tag]), tags), str(p.get("stat_type")), ts, str(p["_field"]))
            seen.add(key)
            if key not in expected:
                out.only_influx += 1
                out._note(f"only in InfluxDB: {key}")
            elif math.isclose(float(p["_value"]), expected[key], rel_tol=1e-9, abs_tol=1e-12):
                out.same += 1
            else:
                out.differing += 1
                out._note(f"differs: {key} InfluxDB {p['_value']} PostgreSQL {expected[key]}")
    out.only_postgres = len(set(expected) - seen)
    return out
