"""What every warehouse asset does around its writer: window in; metadata and checks out."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import dagster as dg
import psycopg2.errors
import sqlalchemy as sa

from agg_pipeline import late_data
from agg_pipeline.catalogue import get_catalogue
from agg_pipeline.compute.windows import Window
from agg_pipeline.resources.influx import InfluxResource
from agg_pipeline.resources.sources import readings_source
from agg_pipeline.resources.warehouse import WarehouseResource
from agg_pipeline.settings import get_settings
from agg_pipeline.writers import WriteContext, WriteReport

# A backfill over many partitions is one run, and each run writes its whole window with a
# few set-based statements (one transaction per chunk of days): the per-run overhead of
# Dagster (~2.5-3 s) is paid once, not once per partition. `--partition-range` on the CLI
# requires exactly this policy.
BACKFILL = dg.BackfillPolicy.single_run()

# Errors worth retrying (the database restarted, a deadlock or serialization conflict
# with another writer); anything else fails the run at once with its message.
TRANSIENT = (
    sa.exc.OperationalError,
    psycopg2.errors.DeadlockDetected,
    psycopg2.errors.SerializationFailure,
)
MAX_RETRIES = 3


def partition_window(context: dg.AssetExecutionContext) -> Window:
    """The run's whole time window: one partition, or the range of a backfill run."""
    tw = context.partition_time_window
    return Window(tw.start, tw.end)


def write_context(
    warehouse: WarehouseResource, influx: InfluxResource | None = None
) -> WriteContext:
    catalogue, settings = get_catalogue(), get_settings()
    source = readings_source(
        catalogue, warehouse.get_engine(), settings.parallelism, warehouse.work_mem, influx
    )
    return WriteContext(warehouse, source, catalogue, settings)


def sink_windows(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    influx: InfluxResource,
    level: str,
    report: WriteReport,
) -> None:
    """Write the run's windows to the InfluxDB sink (if the catalogue has one): after the
    warehouse committed, so InfluxDB only ever gets what PostgreSQL holds."""
    from agg_pipeline import influx_sink

    written = influx_sink.write_windows(
        warehouse.get_engine(), influx, get_catalogue(), level, report.window
    )
    if written is not None:
        report.influx_points_written = written
        context.log.info(f"{written} points written to InfluxDB ({level} windows)")


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "_no rows_"
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [f"{row[h]:.6g}" if isinstance(row[h], float) else str(row[h]) for h in headers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_reason(context: dg.AssetExecutionContext) -> str:
    tags = context.run.tags
    if tags.get("agg_pipeline/healing"):
        return f"automation: self-healing ({tags['agg_pipeline/healing']})"
    if tags.get("dagster/from_automation_condition") or tags.get("dagster/auto_materialize"):
        return "automation: upstream changed (late data)"
    if "dagster/schedule_name" in tags:
        return f"schedule {tags['dagster/schedule_name']}"
    if "dagster/backfill" in tags:
        return f"backfill {tags['dagster/backfill']}"
    if "dagster/sensor_name" in tags:
        return f"sensor {tags['dagster/sensor_name']}"
    return "manual"


def write_with_retries(context: dg.AssetExecutionContext, write: Callable[[], WriteReport]):
    try:
        return write()
    except TRANSIENT as exc:
        # Exponential backoff with jitter: 5 s, 10 s, 20 s (+/- 20 %).
        wait = 5 * 2**context.retry_number * random.uniform(0.8, 1.2)
        context.log.warning(f"transient database error, retrying in {wait:.0f} s: {exc}")
        raise dg.RetryRequested(max_retries=MAX_RETRIES, seconds_to_wait=wait) from exc


def materialize_result(
    context: dg.AssetExecutionContext,
    report: WriteReport,
    warehouse: WarehouseResource,
    checks: Sequence[dg.AssetCheckResult] = (),
    asset_key: str | None = None,
) -> dg.MaterializeResult:
    """Metadata every materialization records, and a log line an operator can read."""
    span = (
        f"{report.first_reading_at.isoformat()} .. {report.last_reading_at.isoformat()}"
        if report.first_reading_at and report.last_reading_at
        else "no readings"
    )
    metadata: dict[str, object] = {
        "table": dg.MetadataValue.text(report.table),
        "window": dg.MetadataValue.text(str(report.window)),
        "reason": dg.MetadataValue.text(run_reason(context)),
        "rows_written": dg.MetadataValue.int(report.rows_written),
        "rows_replaced": dg.MetadataValue.int(report.rows_deleted),
        "series": dg.MetadataValue.int(len(report.sensors)),
        "time_span": dg.MetadataValue.text(span),
        "chunks": dg.MetadataValue.int(report.chunks),
        "preview": dg.MetadataValue.md(markdown_table(report.preview)),
    }
    if report.raw_rows_read is not None:
        metadata["raw_rows_read"] = dg.MetadataValue.int(report.raw_rows_read)
        metadata["rejected_total"] = dg.MetadataValue.int(sum(report.rejected.values()))
        metadata["rejected_by_reason"] = dg.MetadataValue.json(
            {k: report.rejected.get(k, 0) for k in sorted(report.rejected)}
        )
        metadata["unknown_fields"] = dg.MetadataValue.json(dict(report.unknown_fields))
    with warehouse.get_engine().connect() as conn:
        late_rows, last_late = late_data.late_rows_in(conn, report.window)
    if late_rows:
        # Why a correction ran: readings that arrived after their hour had settled.
        metadata["late_rows_found"] = dg.MetadataValue.int(late_rows)
        metadata["last_late_arrival"] = dg.MetadataValue.text(last_late.isoformat())
    if report.influx_points_written is not None:
        metadata["influx_points_written"] = dg.MetadataValue.int(report.influx_points_written)
    if report.new_sensors:
        metadata["new_sensors_registered"] = dg.MetadataValue.int(report.new_sensors)
    if report.median_status:
        metadata["median_status"] = dg.MetadataValue.json(dict(report.median_status))
    if report.notes:
        metadata["notes"] = dg.MetadataValue.md("\n".join(f"- {n}" for n in report.notes))
        for note in report.notes:
            context.log.warning(note)
    context.log.info(
        f"{report.table} {report.window}: {report.rows_written} rows written "
        f"({report.rows_deleted} replaced), {len(report.sensors)} series"
        + (f"; {late_rows} late rows recorded in the window" if late_rows else "")
    )
    return dg.MaterializeResult(asset_key=asset_key, metadata=metadata, check_results=list(checks))
