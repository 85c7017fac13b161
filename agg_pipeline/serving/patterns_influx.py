"""Pattern aggregates read back from InfluxDB, behind the read API of ``serving.patterns``.

The old ``PatternAggregateClient`` read its daily aggregates from the
``pattern_aggregates_daily`` bucket; the sink (``influx/sink.py``) writes that bucket in the
old shape. ``InfluxPatterns`` reads it with the same parameters, checks, models and
``problems`` reporting as the PostgreSQL reader:

    reader = patterns_influx.configured_reader(engine)   # the catalogue decides
    patterns.query(reader, "sequence", date(2026, 11, 1), date(2026, 11, 30))
    patterns.aggregate(reader, "time_based", "occurrences", start, end, how="sum")

The seed's query helpers, in Flux: by date range (``range`` over the days' midnights UTC,
where the sink stamps them), by detector type (measurement), by entity / device pair / area
when it is a tag (a ``filter`` in InfluxDB; an entity inside a pair, a sequence or a room's
device usage is matched here, exactly as the PostgreSQL reader does), and sum / mean / count
per key computed by InfluxDB (``pattern_aggregate``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

import pandas as pd
import sqlalchemy as sa
from pydantic import ValidationError

from agg_pipeline.config.catalogue import Catalogue, get_catalogue
from agg_pipeline.influx import flux
from agg_pipeline.influx.client import InfluxError, InfluxResource
from agg_pipeline.serving import patterns


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, UTC)


def _plain(value: object) -> object:
    """A pandas cell as the Python value a model validates (numpy scalars, NA)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


class InfluxPatterns:
    """The pattern aggregates in ``bucket`` (where the sink writes them)."""

    def __init__(self, influx: InfluxResource, bucket: str) -> None:
        flux.string(bucket)  # a name we will write into Flux: refused now, not at a query
        self.influx = influx
        self.bucket = bucket

    def _records(self, det: patterns.Detector, query: str) -> Iterator[dict[str, Any]]:
        frame = self.influx.query_frames(query).get("rows")
        if frame is None:
            return
        for raw in frame.to_dict("records"):
            yield {k: _plain(v) for k, v in raw.items() if k and not k.startswith("_")}

    def query(
        self,
        detector_type: str,
        start: date,
        end: date | None = None,
        entity_id: str | None = None,
        device_pair: str | None = None,
        area_id: str | None = None,
    ) -> patterns.QueryResult:
        det, start, end = patterns.checked_query(
            detector_type, start, end, entity_id, device_pair, area_id
        )
        # Filters on a tag go to InfluxDB; an entity inside a field is matched below.
        tags = {}
        if device_pair is not None:
            tags["device_pair"] = device_pair
        if area_id is not None:
            tags["area_id"] = area_id
        if entity_id is not None and "entity_id" in det.tags:
            tags["entity_id"] = entity_id
        try:
            text = flux.pattern_rows(
                self.bucket, det.measurement, _midnight(start), _midnight(end + timedelta(1)), tags
            )
        except ValueError as exc:  # a filter Flux cannot carry (control characters)
            raise patterns.PatternQueryError(f"{', '.join(tags)}: {exc}") from None
        result = patterns.QueryResult()
        place = f"{self.bucket}/{det.measurement}"
        parsed = []
        for record in self._records(det, text):
            day = record.pop("date", None)
            try:
                for c in det.json_fields:
                    record[c] = json.loads(record[c])
                model = det.model.model_validate({**record, "day": day})
            except (json.JSONDecodeError, TypeError, KeyError, ValidationError) as exc:
                result.problems.append(
                    f"{place} {day} {record.get(det.key)}: "
                    + (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                )
                continue
            if entity_id is None or "entity_id" in det.tags or _involves(model, entity_id):
                parsed.append(model)
        result.rows = sorted(parsed, key=lambda m: (m.day, getattr(m, det.key)))
        return result

    def aggregate(
        self,
        detector_type: str,
        metric: str,
        start: date,
        end: date,
        how: Literal["sum", "mean", "count"] = "sum",
    ) -> dict[str, float]:
        det = patterns.checked_aggregate(detector_type, metric, how)
        start, end = patterns.checked_range(start, end)
        frame = self.influx.query_frames(
            flux.pattern_aggregate(self.bucket, det.measurement, det.key, metric, how,
                                   _midnight(start), _midnight(end + timedelta(1)))
        ).get("aggregate")  # fmt: skip
        if frame is None:
            return {}
        return {str(k): float(v) for k, v in zip(frame[det.key], frame["_value"], strict=True)}


def _involves(model: patterns._Aggregate, entity: str) -> bool:
    """The PostgreSQL reader's entity match for detectors whose key is not the entity."""
    if isinstance(model, patterns.CoOccurrenceDaily):
        return entity in (model.entity_a, model.entity_b)
    if isinstance(model, patterns.SequenceDaily):
        return entity in model.sequence
    if isinstance(model, patterns.RoomBasedDaily):
        return entity in model.device_usage
    return True


def reader_for(
    catalogue: Catalogue, engine: sa.Engine, influx: InfluxResource | None
) -> sa.Engine | InfluxPatterns:
    """What ``catalogue`` says pattern reads use: ``influx_sink.patterns_read``."""
    sink = catalogue.influx_sink
    if sink is None or sink.patterns_read != "influxdb":
        return engine
    if influx is None or not influx.enabled:
        raise InfluxError(
            f"catalogue {catalogue.name!r} reads pattern aggregates from InfluxDB "
            "(influx_sink.patterns_read), but InfluxDB is not configured: set INFLUXDB_URL, "
            "INFLUXDB_TOKEN and INFLUXDB_ORG"
        )
    return InfluxPatterns(influx, sink.patterns_bucket or "")


def configured_reader(
    engine: sa.Engine, influx: InfluxResource | None = None
) -> sa.Engine | InfluxPatterns:
    """The configured catalogue's pattern reader; InfluxDB from ``INFLUXDB_*`` unless given."""
    if influx is None:
        influx = InfluxResource.from_env()
    return reader_for(get_catalogue(), engine, influx)
