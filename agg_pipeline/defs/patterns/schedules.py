"""The pattern detectors' job, schedule and self-healing run group."""

from __future__ import annotations

import dagster as dg

from agg_pipeline.defs import partitions
from agg_pipeline.defs.patterns.assets import EVENT_DETECTORS
from agg_pipeline.defs.scheduling import max_runtime, partition_schedule, previous_day, settings

patterns_job = dg.define_asset_job(
    "daily_patterns",
    selection=dg.AssetSelection.groups("patterns"),
    description="The six pattern detectors for a day (anomaly after time-based).",
    tags=max_runtime(3600),
)
JOBS = [patterns_job]
SCHEDULES = [
    partition_schedule(
        "patterns_at_0145",
        "45 1 * * *",
        patterns_job,
        previous_day,
        partitions.daily,
        settings.schedule_patterns,
        "At 01:45, the previous day's six pattern aggregates (the old detectors' daily "
        "storage). Switch: AGG_PIPELINE_SCHEDULE_PATTERNS.",
    )
]
HEALING_JOBS = {
    "patterns": (patterns_job, [f"pattern_{n}_daily" for n in (*EVENT_DETECTORS, "anomaly")])
}
