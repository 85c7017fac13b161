"""Daily pattern aggregates: typed models, batch writes and a read API.

    from agg_pipeline.serving import patterns
    result = patterns.query(engine, "sequence", date(2026, 11, 1), date(2026, 11, 30))
    result.rows        # [SequenceDaily(day=..., sequence=[...], confidence=0.9, ...)]
    result.problems    # rows whose stored JSON did not parse, named - never dropped silently
    patterns.aggregate(engine, "time_based", "occurrences", start, end, how="sum")

Detector types: time_based, co_occurrence, sequence, room_based, duration, anomaly. Each
maps to ``bi.pattern_<type>_daily`` keyed by (day, key); queries filter by date range and
optionally by entity, device pair or area; ``aggregate`` sums / averages / counts a numeric
field over the range per key.

Read parameters are checked before any query, and a bad one raises ``PatternQueryError`` (a
``ValueError``) whose message names it: ``start`` / ``end`` are ``datetime.date`` values (not
datetimes, not strings), 1970-01-01 or later, ``end >= start``, at most ``MAX_DAYS`` = 366
days per query, both ends included; ``detector_type``, ``metric``, ``entity_id``,
``device_pair`` and ``area_id`` are non-empty strings without NUL characters (at most 1000);
``how`` is "sum", "mean" or "count".
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal, Protocol

import sqlalchemy as sa
from psycopg2.extras import execute_values
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agg_pipeline.serving import read_params
from agg_pipeline.warehouse import retention

MAX_DAYS = 366  # days per query, both ends included


class _Aggregate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    day: date


class TimeBasedDaily(_Aggregate):
    entity_id: str
    domain: str
    hourly_distribution: list[int] = Field(min_length=24, max_length=24)
    peak_hours: list[int]
    frequency: float = Field(ge=0, le=1)
    confidence: float = Field(ge=0, le=1)
    occurrences: int = Field(ge=0)


class CoOccurrenceDaily(_Aggregate):
    device_pair: str
    entity_a: str
    entity_b: str
    co_occurrence_count: int = Field(ge=0)
    time_window_seconds: int
    confidence: float = Field(ge=0, le=1)
    typical_hours: list[int]


class SequenceDaily(_Aggregate):
    sequence_id: str
    sequence: list[str] = Field(min_length=2)
    frequency: int = Field(ge=0)
    avg_duration_seconds: float = Field(ge=0)
    confidence: float = Field(ge=0, le=1)


class RoomBasedDaily(_Aggregate):
    area_id: str
    activity_level: float = Field(ge=0, le=1)
    device_usage: dict[str, int]
    transition_patterns: list[dict[str, Any]]
    peak_activity_hours: list[int]


class DurationDaily(_Aggregate):
    entity_id: str
    sessions: int = Field(ge=0)
    avg_duration_seconds: float
    min_duration_seconds: float
    max_duration_seconds: float
    duration_variance: float = Field(ge=0)
    efficiency_score: float = Field(ge=0, le=1)


class AnomalyDaily(_Aggregate):
    entity_id: str
    anomaly_type: str
    anomaly_score: float = Field(ge=0, le=1)
    baseline_deviation: float
    occurrences: int
    severity: Literal["low", "medium", "high", "critical"]
    baseline_days: int
    baseline_mean: float


@dataclass(frozen=True)
class Detector:
    name: str
    model: type[_Aggregate]
    key: str  # detector key column (with day: the primary key)
    json_fields: tuple[str, ...]
    measurement: str  # the old InfluxDB measurement
    tags: tuple[str, ...]  # fields written as InfluxDB tags (besides date)

    @property
    def table(self) -> str:
        return f"bi.pattern_{self.name}_daily"

    @property
    def columns(self) -> list[str]:
        return list(self.model.model_fields)

    @property
    def numeric_fields(self) -> list[str]:
        return [
            n
            for n, f in self.model.model_fields.items()
            if f.annotation in (int, float) and n not in self.json_fields
        ]


DETECTORS = {
    d.name: d
    for d in (
        Detector(
            "time_based",
            TimeBasedDaily,
            "entity_id",
            ("hourly_distribution", "peak_hours"),
            "time_based_daily",
            ("entity_id", "domain"),
        ),
        Detector(
            "co_occurrence",
            CoOccurrenceDaily,
            "device_pair",
            ("typical_hours",),
            "co_occurrence_daily",
            ("device_pair",),
        ),
        Detector(
            "sequence",
            SequenceDaily,
            "sequence_id",
            ("sequence",),
            "sequence_daily",
            ("sequence_id",),
        ),
        Detector(
            "room_based",
            RoomBasedDaily,
            "area_id",
            ("device_usage", "transition_patterns", "peak_activity_hours"),
            "room_based_daily",
            ("area_id",),
        ),
        Detector("duration", DurationDaily, "entity_id", (), "duration_daily", ("entity_id",)),
        Detector(
            "anomaly", AnomalyDaily, "entity_id", (), "anomaly_daily", ("entity_id", "anomaly_type")
        ),
    )
}


class PatternQueryError(ValueError):
    """A pattern query parameter is invalid; the message names it."""


def detector(name: str) -> Detector:
    read_params.text("detector_type", name, PatternQueryError)
    if name not in DETECTORS:
        raise PatternQueryError(
            f"detector_type: unknown detector type {name!r}; one of {', '.join(DETECTORS)}"
        )
    return DETECTORS[name]


# --------------------------------------------------------------------------------------
# Writes
# --------------------------------------------------------------------------------------


def _row(det: Detector, aggregate: _Aggregate) -> tuple:
    data = aggregate.model_dump()
    return tuple(json.dumps(data[c]) if c in det.json_fields else data[c] for c in det.columns)


def replace_days(conn: sa.Connection, det: Detector, days: list[date], rows: list[dict]) -> int:
    """Replace the given days of ``det``'s table with ``rows`` (in the caller's transaction).

    Rows are validated against the model first: a bad aggregate fails the write, not the
    reader later.
    """
    # Days whose raw events retention released keep their aggregates: they are final.
    released = retention.released_days(conn, "raw.events", days)
    days = [d for d in days if d not in released]
    models = [m for m in (det.model.model_validate(r) for r in rows) if m.day not in released]
    conn.execute(
        sa.text(f"DELETE FROM {det.table} WHERE day = ANY (CAST(:days AS date[]))"),
        {"days": days},
    )
    if models:
        cols = ", ".join(det.columns)
        cur = conn.connection.dbapi_connection.cursor()
        execute_values(
            cur,
            f"INSERT INTO {det.table} ({cols}) VALUES %s",
            [_row(det, m) for m in models],
            page_size=1000,
        )
    return len(models)


def write_batch(engine: sa.Engine, aggregates: list[_Aggregate]) -> int:
    """Upsert aggregates of any detector types in one transaction (one statement per type)."""
    by_type: dict[str, list[_Aggregate]] = {}
    for a in aggregates:
        name = next(n for n, d in DETECTORS.items() if isinstance(a, d.model))
        by_type.setdefault(name, []).append(a)
    with engine.begin() as conn:
        cur = conn.connection.dbapi_connection.cursor()
        for name, items in by_type.items():
            det = DETECTORS[name]
            cols = det.columns
            updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c not in ("day", det.key))
            execute_values(
                cur,
                f"INSERT INTO {det.table} ({', '.join(cols)}) VALUES %s "
                f"ON CONFLICT (day, {det.key}) DO UPDATE SET {updates}",
                [_row(det, a) for a in items],
                page_size=1000,
            )
    return len(aggregates)


# --------------------------------------------------------------------------------------
# Reads
# --------------------------------------------------------------------------------------


@dataclass
class QueryResult:
    rows: list[_Aggregate] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class PatternReader(Protocol):
    """Another store of the same aggregates (``serving.patterns_influx.InfluxPatterns``):
    the same parameters, checks, models and ``problems``."""

    def query(
        self,
        detector_type: str,
        start: date,
        end: date | None = None,
        entity_id: str | None = None,
        device_pair: str | None = None,
        area_id: str | None = None,
    ) -> QueryResult: ...

    def aggregate(
        self,
        detector_type: str,
        metric: str,
        start: date,
        end: date,
        how: Literal["sum", "mean", "count"] = "sum",
    ) -> dict[str, float]: ...


def checked_query(
    detector_type: str,
    start: date,
    end: date | None,
    entity_id: str | None,
    device_pair: str | None,
    area_id: str | None,
) -> tuple[Detector, date, date]:
    """A query's parameters checked (every reader runs these first): detector, start, end."""
    det = detector(detector_type)
    start, end = _date_range(start, end)
    for name, value in (
        ("entity_id", entity_id),
        ("device_pair", device_pair),
        ("area_id", area_id),
    ):
        if value is not None:
            read_params.text(name, value, PatternQueryError)
    if device_pair is not None and det.name != "co_occurrence":
        raise PatternQueryError("device_pair filters co_occurrence aggregates only")
    if area_id is not None and det.name != "room_based":
        raise PatternQueryError("area_id filters room_based aggregates only")
    return det, start, end


def query(
    engine: sa.Engine | PatternReader,
    detector_type: str,
    start: date,
    end: date | None = None,
    entity_id: str | None = None,
    device_pair: str | None = None,
    area_id: str | None = None,
) -> QueryResult:
    """Aggregates of one detector type for days in [start, end] (end inclusive; default
    start), optionally for one entity (its pairs and sequences included), pair or area.
    ``engine``: the warehouse, or another reader (``patterns_influx.configured_reader``)."""
    if not isinstance(engine, sa.Engine):
        return engine.query(detector_type, start, end, entity_id, device_pair, area_id)
    det, start, end = checked_query(detector_type, start, end, entity_id, device_pair, area_id)
    where = ["day >= :start", "day <= :end"]
    params: dict[str, Any] = {"start": start, "end": end}
    if entity_id is not None:
        if det.name == "co_occurrence":
            where.append("(entity_a = :entity OR entity_b = :entity)")
        elif det.name == "sequence":
            where.append("sequence ? :entity")
        elif det.name == "room_based":
            where.append("device_usage ? :entity")
        else:
            where.append("entity_id = :entity")
        params["entity"] = entity_id
    if device_pair is not None:
        where.append("device_pair = :pair")
        params["pair"] = device_pair
    if area_id is not None:
        where.append("area_id = :area")
        params["area"] = area_id
    # JSON columns as text: parsed and validated here, so a malformed value is reported.
    cols = ", ".join(f"{c}::text AS {c}" if c in det.json_fields else c for c in det.columns)
    sql = f"SELECT {cols} FROM {det.table} WHERE {' AND '.join(where)} ORDER BY day, {det.key}"
    result = QueryResult()
    with engine.connect() as conn:
        for raw in conn.execute(sa.text(sql), params).mappings():
            record = dict(raw)
            try:
                for c in det.json_fields:
                    record[c] = json.loads(record[c])
                result.rows.append(det.model.model_validate(record))
            except (json.JSONDecodeError, TypeError, ValidationError) as exc:
                result.problems.append(
                    f"{det.table} {record['day']} {record[det.key]}: "
                    + (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                )
    return result


def _date_range(start: date, end: date | None) -> tuple[date, date]:
    start = read_params.day("start", start, PatternQueryError)
    end = start if end is None else read_params.day("end", end, PatternQueryError)
    if end < start:
        raise PatternQueryError(f"end {end} is before start {start}")
    days = (end - start).days + 1
    if days > MAX_DAYS:
        raise PatternQueryError(
            f"end: at most {MAX_DAYS} days per query (start and end included), "
            f"{start} .. {end} is {days}"
        )
    return start, end


def checked_range(start: date, end: date | None) -> tuple[date, date]:
    """``start`` / ``end`` checked (dates, ordered, at most ``MAX_DAYS``)."""
    return _date_range(start, end)


def checked_aggregate(detector_type: str, metric: str, how: str) -> Detector:
    """An aggregate's parameters checked (every reader runs these first)."""
    det = detector(detector_type)
    read_params.text("metric", metric, PatternQueryError)
    if how not in ("sum", "mean", "count"):
        raise PatternQueryError(f"how must be sum, mean or count, not {how!r}")
    if metric not in det.numeric_fields:
        raise PatternQueryError(
            f"metric {metric!r} is not a numeric field of {det.name}: "
            + ", ".join(det.numeric_fields)
        )
    return det


def aggregate(
    engine: sa.Engine | PatternReader,
    detector_type: str,
    metric: str,
    start: date,
    end: date,
    how: Literal["sum", "mean", "count"] = "sum",
) -> dict[str, float]:
    """``how`` of ``metric`` per detector key over the days in [start, end]."""
    if not isinstance(engine, sa.Engine):
        return engine.aggregate(detector_type, metric, start, end, how)
    det = checked_aggregate(detector_type, metric, how)
    rows = query(engine, detector_type, start, end).rows
    values: dict[str, list[float]] = {}
    for r in rows:
        values.setdefault(getattr(r, det.key), []).append(float(getattr(r, metric)))
    if how == "sum":
        return {k: sum(v) for k, v in values.items()}
    if how == "mean":
        return {k: statistics.fmean(v) for k, v in values.items()}
    return {k: float(len(v)) for k, v in values.items()}


# --------------------------------------------------------------------------------------
# Benchmark: 1000 aggregates in one batch
# --------------------------------------------------------------------------------------


def sample_aggregates(n: int, day: date = date(2026, 1, 1)) -> list[_Aggregate]:
    """``n`` realistic aggregates of all six types (for the write benchmark)."""
    out: list[_Aggregate] = []
    for i in range(n):
        kind = i % 6
        entity = f"light.room_{i}"
        if kind == 0:
            out.append(
                TimeBasedDaily(
                    day=day,
                    entity_id=entity,
                    domain="light",
                    hourly_distribution=[i % 3] * 24,
                    peak_hours=[7, 19],
                    frequency=0.5,
                    confidence=0.8,
                    occurrences=24,
                )
            )
        elif kind == 1:
            out.append(
                CoOccurrenceDaily(
                    day=day,
                    device_pair=f"{entity}+switch.x{i}",
                    entity_a=entity,
                    entity_b=f"switch.x{i}",
                    co_occurrence_count=3,
                    time_window_seconds=300,
                    confidence=0.9,
                    typical_hours=[7],
                )
            )
        elif kind == 2:
            out.append(
                SequenceDaily(
                    day=day,
                    sequence_id=f"{i:016x}",
                    sequence=[entity, "switch.coffee"],
                    frequency=2,
                    avg_duration_seconds=95.0,
                    confidence=1.0,
                )
            )
        elif kind == 3:
            out.append(
                RoomBasedDaily(
                    day=day,
                    area_id=f"area_{i}",
                    activity_level=0.4,
                    device_usage={entity: 3},
                    transition_patterns=[{"to": "hallway", "count": 2}],
                    peak_activity_hours=[20],
                )
            )
        elif kind == 4:
            out.append(
                DurationDaily(
                    day=day,
                    entity_id=entity,
                    sessions=3,
                    avg_duration_seconds=600,
                    min_duration_seconds=300,
                    max_duration_seconds=900,
                    duration_variance=60000,
                    efficiency_score=0.7,
                )
            )
        else:
            out.append(
                AnomalyDaily(
                    day=day,
                    entity_id=entity,
                    anomaly_type="activity_spike",
                    anomaly_score=0.8,
                    baseline_deviation=5.0,
                    occurrences=40,
                    severity="high",
                    baseline_days=14,
                    baseline_mean=6.0,
                )
            )
    return out


def bench_write_batch(engine: sa.Engine, n: int = 1000, reps: int = 3) -> dict:
    aggregates = sample_aggregates(n)
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        write_batch(engine, aggregates)
        seconds.append(time.perf_counter() - start)
    with engine.begin() as conn:
        for det in DETECTORS.values():
            conn.execute(
                sa.text(f"DELETE FROM {det.table} WHERE day = :d"), {"d": date(2026, 1, 1)}
            )
    return {"n": n, "postgres_s": statistics.median(seconds), "samples_s": seconds}
