"""The external raw readings: declared so lineage starts where the data does.

An *observable* source: its data version per hourly partition changes only when readings
arrive late (after the hour settled), so automation re-materializes exactly the partitions
that late data touched. The late-data sensor reports those observations every 30 s; the
"Observe sources" button in the UI runs the same observation by hand.
"""

from datetime import datetime, timedelta

import dagster as dg
import sqlalchemy as sa

from agg_pipeline.config.catalogue import get_catalogue
from agg_pipeline.config.settings import get_settings
from agg_pipeline.core import clock
from agg_pipeline.defs import partitions
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse import late_data
from agg_pipeline.warehouse.engine import WarehouseResource

_catalogue = get_catalogue()


def observe_late_hours(
    warehouse: WarehouseResource,
    influx: InfluxResource | None = None,
    now: datetime | None = None,
) -> dict[str, late_data.LateHour]:
    """Record late readings (PostgreSQL: drain the trigger's change log; InfluxDB: compare
    hourly fingerprints); the late hours within the lookback, by partition key."""
    settings = get_settings()
    engine = warehouse.get_engine()
    origin = _origin()
    settle = timedelta(minutes=settings.late_data_settle_minutes)
    now = now or clock.now()
    since = now - timedelta(days=settings.late_data_lookback_days)
    if _catalogue.raw_in_postgres:
        late_data.drain(engine, origin, settle)
    else:
        observe_influx(engine, influx, since, now, settle)
    return {
        partitions.hourly.get_partition_key_for_timestamp(h.hour_start.timestamp()): h
        for h in late_data.changes_since(engine, 0, since)
        if h.hour_start >= origin
    }


def observe_influx(
    engine: sa.Engine,
    influx: InfluxResource | None,
    since: datetime,
    now: datetime,
    settle: timedelta,
) -> int:
    """One Flux query over the lookback: hourly point counts and last point times."""
    from agg_pipeline.influx import flux
    from agg_pipeline.influx.client import InfluxError

    if influx is None or not influx.enabled:
        raise InfluxError("raw readings are in InfluxDB, but INFLUXDB_URL is not set")
    src = _catalogue.source
    # Whole hours on the partitions' grid, so every hour is counted completely.
    first = partitions.hourly.start_time_for_partition_key(
        partitions.hourly.get_partition_key_for_timestamp(max(since, _origin()).timestamp())
    )
    offset = timedelta(seconds=int(first.timestamp()) % 3600)
    frames = influx.query_frames(
        flux.hourly_fingerprints(src.bucket, src.measurement, first, now, offset)
    )
    return late_data.record_fingerprints(
        engine, late_data.influx_fingerprints(frames), first, now, settle
    )


def _origin() -> datetime:
    return partitions.hourly.start_time_for_partition_key(
        partitions.hourly.get_first_partition_key()
    )


@dg.observable_source_asset(
    name="raw_readings",
    description=(
        "Raw sensor readings, written by the devices' own ingestion (not by agg_pipeline). "
        f"Source: {_catalogue.source.describe()}. Catalogue "
        f"`{_catalogue.name}`: {', '.join(_catalogue.fields)}. Data version per hour = late "
        "rows recorded for it."
    ),
    partitions_def=partitions.hourly,
    group_name="sources",
    required_resource_keys={"warehouse", "influx"},
    metadata={"catalogue": _catalogue.name, "source": _catalogue.source.describe()},
)
def raw_readings(context: dg.OpExecutionContext) -> dg.DataVersionsByPartition:
    late = observe_late_hours(context.resources.warehouse, context.resources.influx)
    context.log.info(f"{len(late)} hour(s) with late readings in the lookback")
    return dg.DataVersionsByPartition({k: h.data_version for k, h in late.items()})
