"""The readings' sensor: ``late_data_sensor`` (the self-healing sensor that corrects the
partitions is defs/operations/self_healing.py's, over every family)."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from agg_pipeline.core import clock
from agg_pipeline.defs import partitions
from agg_pipeline.defs.readings.raw import observe_late_hours
from agg_pipeline.defs.scheduling import settings
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse import late_data
from agg_pipeline.warehouse.engine import WarehouseResource


@dg.sensor(
    name="late_data_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING
    if settings.late_data_sensor
    else dg.DefaultSensorStatus.STOPPED,
    description="Reports an observation of raw_readings for every hour that received late "
    "readings (after the hour settled), with a new data version (lineage in the UI; "
    "self_healing_sensor corrects the partitions). Reads the change log kept by a "
    "trigger: no raw scans. "
    "Switch: AGG_PIPELINE_LATE_DATA_SENSOR.",
)
def late_data_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource, influx: InfluxResource
) -> dg.SensorResult:
    seq = int(context.cursor or 0)
    observe_late_hours(warehouse, influx)  # record late readings as per-hour late counts
    since = clock.now() - timedelta(days=settings.late_data_lookback_days)
    first = partitions.hourly.start_time_for_partition_key(
        partitions.hourly.get_first_partition_key()
    )
    changed = [
        h
        for h in late_data.changes_since(warehouse.get_engine(), seq, since)
        if h.hour_start >= first
    ]
    if not changed:
        return dg.SensorResult(skip_reason="no late readings", cursor=str(seq))
    events = []
    for hour in changed:
        key = partitions.hourly.get_partition_key_for_timestamp(hour.hour_start.timestamp())
        events.append(
            dg.AssetObservation(
                asset_key="raw_readings",
                partition=key,
                tags={"dagster/data_version": hour.data_version},
                metadata={
                    "late_rows_total": hour.late_rows,
                    "last_late_arrival": hour.last_late_at.isoformat(),
                },
            )
        )
        context.log.info(f"late readings in {key}: {hour.late_rows} in total so far")
    return dg.SensorResult(asset_events=events, cursor=str(max(h.change_seq for h in changed)))
