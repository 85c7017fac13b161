"""Raw-readings sources: the protocol (``base``), one module per kind of store, and the
factory the assets use. Adding a source is a module here plus a line in ``readings_source``.
"""

from __future__ import annotations

import sqlalchemy as sa

from agg_pipeline.config.catalogue import Catalogue
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.sources.base import ReadingsSource, StageContext
from agg_pipeline.sources.influx import InfluxReadingsSource
from agg_pipeline.sources.postgres import PostgresReadingsSource

__all__ = ["ReadingsSource", "StageContext", "readings_source"]


def readings_source(
    catalogue: Catalogue,
    engine: sa.Engine,
    shards: int = 1,
    work_mem: str = "256MB",
    influx: InfluxResource | None = None,
    plain_1m: bool = False,
    hour_values: bool = True,
) -> ReadingsSource:
    """The source the catalogue describes: a table of ``engine``'s database, or InfluxDB."""
    if catalogue.source.kind == "postgres":
        return PostgresReadingsSource(catalogue, engine, shards, work_mem, plain_1m, hour_values)
    if catalogue.source.kind == "influxdb":
        return InfluxReadingsSource(catalogue, influx or InfluxResource())
    raise ValueError(f"unsupported source kind {catalogue.source.kind!r}")
