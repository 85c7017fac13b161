"""The settings the Dagster definitions are built with, read once when the code location
loads: partition start and zone, schedule switches, freshness deadlines in the local zone, the
event rollups' catalogue.

The one module that reads settings at import time. Code that runs later (an asset, a
check, a sensor tick) calls ``get_settings()`` then, so a value is never captured twice.
"""

from __future__ import annotations

from agg_pipeline.config.events import EventsCatalogue, get_events_catalogue
from agg_pipeline.config.settings import Settings, get_settings

SETTINGS: Settings = get_settings()
TIMEZONE: str = SETTINGS.timezone
# How a backfill splits into runs (0: one run): every partitioned asset's BackfillPolicy.
BACKFILL_PARTITIONS_PER_RUN: int = SETTINGS.backfill_partitions_per_run
# The event rollups declared (AGG_PIPELINE_EVENTS_CATALOGUE): their assets, partitions
# and schedules are built from it.
EVENTS_CATALOGUE: EventsCatalogue = get_events_catalogue()
