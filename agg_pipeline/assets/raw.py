"""The external raw readings: declared so lineage starts where the data does."""

from __future__ import annotations

import dagster as dg

from agg_pipeline import partitions
from agg_pipeline.catalogue import get_catalogue

_catalogue = get_catalogue()

raw_readings = dg.AssetSpec(
    key="raw_readings",
    description=(
        "Raw sensor readings, written by the devices' own ingestion (not by agg_pipeline). "
        f"Source: {_catalogue.source.kind} `{_catalogue.source.table}`, one row per "
        f"(time, {_catalogue.source.device_column}, field, value). Catalogue "
        f"`{_catalogue.name}`: {', '.join(_catalogue.fields)}."
    ),
    partitions_def=partitions.hourly,
    group_name="sources",
    kinds={"postgres"},
    metadata={"catalogue": _catalogue.name, "table": _catalogue.source.table},
)
