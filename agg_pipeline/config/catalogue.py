"""The series catalogue: what the raw source is and which fields it carries.

Config is data: the raw table, the column (or tag) that identifies a device, and each field
with its unit, physical bounds and optional default optimal range live in one YAML file,
validated here. A bad catalogue fails at load with a message naming the offending key, e.g.
``catalogue 'farm.yaml': fields.ph.max: must be greater than min (14.0 <= 20.0)``.
"""

from __future__ import annotations

import functools
import math
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agg_pipeline.config.settings import get_settings
from agg_pipeline.config.yaml_model import parse_model
from agg_pipeline.core.formulas import FormulaError, parse

SHIPPED = ("hydroponics", "water_quality", "water_quality_influx", "oil_well")

# SQL identifiers from config are validated here and quoted again where they are used.
_IDENT = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
Identifier = Annotated[str, Field(pattern=rf"^{_IDENT}$")]
QualifiedName = Annotated[str, Field(pattern=rf"^({_IDENT}\.)?{_IDENT}$")]
# Field and device names travel as bound values, but are also used in Flux strings and
# metadata; keep them boring.
FieldName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,62}$")]


class CatalogueError(ValueError):
    """The catalogue cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    """A closed range ``[min, max]`` of finite values."""

    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise ValueError("min and max must be finite numbers")
        if self.max <= self.min:
            raise ValueError(f"max must be greater than min ({self.max} <= {self.min})")
        return self


class FieldSpec(_Strict):
    """One measured quantity."""

    sensor_type: Identifier = Field(description="iot.sensor_types.name, e.g. PH_SENSOR")
    unit: str = Field(min_length=1, max_length=32)
    min: float = Field(description="Lowest physically possible value; below is rejected.")
    max: float = Field(description="Highest physically possible value; above is rejected.")
    description: str = ""
    optimal: Range | None = Field(
        default=None,
        description="Default optimal range, used for conditions when no active crop batch "
        "defines one for this field.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> FieldSpec:
        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise ValueError("min and max must be finite numbers")
        if self.max <= self.min:
            raise ValueError(f"max must be greater than min ({self.max} <= {self.min})")
        if self.optimal and not (self.min <= self.optimal.min and self.optimal.max <= self.max):
            raise ValueError("optimal range must lie within [min, max]")
        return self


class DerivedMetric(_Strict):
    """A per-device hourly metric computed from the device's hourly rollups (formulas.py)."""

    formula: str = Field(min_length=1, max_length=2000)
    unit: str = Field(min_length=1, max_length=32)
    description: str = ""
    min: float | None = Field(default=None, description="Declared lower bound (checked).")
    max: float | None = Field(default=None, description="Declared upper bound (checked).")


class PostgresSource(_Strict):
    """Raw readings in a long PostgreSQL table: one row per (time, device, field, value)."""

    kind: Literal["postgres"] = "postgres"
    table: QualifiedName = "raw.readings"
    time_column: Identifier = "time"
    device_column: Identifier = Field(
        default="device", description="The column that identifies a device (the old sensor_tag)."
    )
    field_column: Identifier = "field"
    value_column: Identifier = "value"

    @property
    def schema_and_table(self) -> tuple[str, str]:
        schema, _, table = self.table.rpartition(".")
        return (schema or "public", table)

    def describe(self) -> str:
        return f"PostgreSQL table `{self.table}` (device column `{self.device_column}`)"


# InfluxDB names (buckets, measurements, tags) are written into Flux strings and line
# protocol: keep them to characters that need no escaping anywhere.
InfluxName = FieldName


class InfluxSource(_Strict):
    """Raw readings in an InfluxDB 2.x bucket: one series per (device tag, field).

    The old systems' layout: bucket ``water-quality``, measurement ``water_quality``,
    device tag ``sensor_tag``; each catalogue field is an InfluxDB field (float).
    """

    kind: Literal["influxdb"]
    bucket: InfluxName
    measurement: InfluxName
    device_tag: InfluxName = Field(
        default="sensor_tag", description="The tag that identifies a device."
    )
    tags: tuple[InfluxName, ...] = Field(
        default=(),
        max_length=16,
        description="Other tags of the raw series that belong to its identity, as the old "
        "tasks' aggregateWindow kept them: each tag set is aggregated on its own (its own "
        "device in PostgreSQL, code `<device>,<tag>=<value>...`, influx/series.py) and the "
        "sink writes the tags back. Empty: a device tag plus field is one series.",
    )

    @field_validator("tags")
    @classmethod
    def _plain_tags(cls, tags: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        reserved = {"stat_type", "date", info.data.get("device_tag", "sensor_tag")}
        for tag in tags:
            if tag.startswith("_") or tag in reserved:
                raise ValueError(
                    f"{tag!r} cannot be a carried tag (the device tag, stat_type, date and "
                    "names starting with '_' are InfluxDB's or agg_pipeline's own)"
                )
        if len(set(tags)) != len(tags):
            raise ValueError("tags: each tag once")
        return tags

    def describe(self) -> str:
        return (
            f"InfluxDB bucket `{self.bucket}`, measurement `{self.measurement}`, "
            f"device tag `{self.device_tag}`"
        )


class InfluxSink(_Strict):
    """Where agg_pipeline also writes to InfluxDB, in the shape the old Flux tasks wrote."""

    bucket: InfluxName = Field(description="Bucket for the 1m / 5m downsamples.")
    measurement: InfluxName = Field(
        description="Base measurement: windows go to `<measurement>_1m` and `<measurement>_5m`."
    )
    retention_days: float | None = Field(
        default=None,
        gt=0,
        description="Retention of the bucket: created with it; an existing bucket whose "
        "retention differs is reported by `agg-pipeline influx ensure-buckets` and corrected "
        "with `--apply`. Absent: created without expiry, an existing bucket's retention is "
        "not managed (the old tasks wrote into the raw bucket, whose retention is yours).",
    )
    window_time: Literal["start", "stop"] = Field(
        default="stop",
        description="Timestamp of a window's points: its end (default: what the old tasks' "
        "aggregateWindow stamped, its _stop, so a panel spanning the switch shows no shift) "
        "or its start.",
    )
    readings_1m: bool = True
    readings_5m: bool = True
    patterns_bucket: InfluxName | None = Field(
        default=None,
        description="Bucket for the daily pattern aggregates "
        "(e.g. pattern_aggregates_daily); absent: not written to InfluxDB.",
    )
    patterns_retention_days: float = Field(
        default=90, gt=0, description="Retention of patterns_bucket (managed as above)."
    )
    patterns_read: Literal["postgres", "influxdb"] = Field(
        default="postgres",
        description="Where `serving.patterns_influx.configured_reader` reads pattern "
        "aggregates from: the PostgreSQL tables (default) or patterns_bucket, as the old "
        "PatternAggregateClient did.",
    )

    @model_validator(mode="after")
    def _patterns_read_needs_bucket(self) -> InfluxSink:
        if self.patterns_read == "influxdb" and not self.patterns_bucket:
            raise ValueError("patterns_read: influxdb needs patterns_bucket")
        return self


def _source_kind(value: object) -> str:
    # `kind` may be left out for the PostgreSQL source (the default, as before InfluxDB).
    if isinstance(value, dict):
        return value.get("kind", "postgres")
    return getattr(value, "kind", "postgres")


class Catalogue(_Strict):
    """A validated series catalogue."""

    name: Identifier
    description: str = ""
    source: Annotated[
        Annotated[PostgresSource, Tag("postgres")] | Annotated[InfluxSource, Tag("influxdb")],
        Discriminator(_source_kind),
    ] = PostgresSource()
    influx_sink: InfluxSink | None = Field(
        default=None, description="Also write downsamples / pattern aggregates to InfluxDB."
    )
    sample_interval_seconds: float = Field(
        gt=0, description="Expected interval between two readings of one sensor (coverage)."
    )
    fields: dict[FieldName, FieldSpec] = Field(min_length=1)
    derived: dict[Identifier, DerivedMetric] = Field(
        default_factory=dict,
        description="Derived hourly metrics per device (device_performance_hourly).",
    )

    @field_validator("fields")
    @classmethod
    def _unique_sensor_types(cls, fields: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
        seen: dict[str, str] = {}
        for name, spec in fields.items():
            if spec.sensor_type in seen:
                raise ValueError(
                    f"sensor_type {spec.sensor_type!r} used by both {seen[spec.sensor_type]!r} "
                    f"and {name!r}"
                )
            seen[spec.sensor_type] = name
        return fields

    @model_validator(mode="after")
    def _formulas_parse(self) -> Catalogue:
        for name, metric in self.derived.items():
            try:
                parse(metric.formula, list(self.fields))
            except FormulaError as exc:
                raise ValueError(f"derived.{name}.formula: {exc}") from None
            if metric.min is not None and metric.max is not None and metric.max <= metric.min:
                raise ValueError(f"derived.{name}: max must be greater than min")
        return self

    @property
    def raw_in_postgres(self) -> bool:
        """True when the raw readings are a PostgreSQL table of the warehouse."""
        return isinstance(self.source, PostgresSource)

    @property
    def field_names(self) -> list[str]:
        return list(self.fields)

    def bounds_arrays(self) -> dict[str, list]:
        """Field names and physical bounds as parallel lists, for binding into SQL."""
        return {
            "fields": list(self.fields),
            "lo": [f.min for f in self.fields.values()],
            "hi": [f.max for f in self.fields.values()],
        }


def _format_location(loc: tuple) -> str:
    # Drop the union tag pydantic adds (source.influxdb.bucket -> source.bucket).
    parts = [
        p for i, p in enumerate(loc) if not (i and loc[i - 1] == "source" and p in _SOURCE_KINDS)
    ]
    return ".".join(str(part) for part in parts) or "(top level)"


_SOURCE_KINDS = ("postgres", "influxdb")


def parse_catalogue(text: str, origin: str) -> Catalogue:
    """Parse and validate catalogue YAML; ``origin`` names it in error messages."""
    return parse_model(text, origin, Catalogue, CatalogueError, "catalogue", _format_location)


def load_catalogue(name_or_path: str) -> Catalogue:
    """Load a shipped catalogue by name, or a YAML file by path."""
    if name_or_path in SHIPPED:
        text = resources.files("agg_pipeline.config.catalogues").joinpath(f"{name_or_path}.yaml")
        return parse_catalogue(text.read_text(encoding="utf-8"), f"{name_or_path}.yaml")
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise CatalogueError(
            f"catalogue {name_or_path!r}: neither a shipped catalogue "
            f"({', '.join(SHIPPED)}) nor an existing file (AGG_PIPELINE_CATALOGUE)"
        )
    return parse_catalogue(path.read_text(encoding="utf-8"), str(path))


@functools.cache
def get_catalogue() -> Catalogue:
    """The catalogue chosen by settings (AGG_PIPELINE_CATALOGUE), loaded once."""
    return load_catalogue(get_settings().catalogue)
