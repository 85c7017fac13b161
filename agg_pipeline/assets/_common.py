"""What every warehouse asset does around its writer: window in, metadata out."""

from __future__ import annotations

import dagster as dg

from agg_pipeline.catalogue import get_catalogue
from agg_pipeline.compute.windows import Window
from agg_pipeline.resources.sources import readings_source
from agg_pipeline.resources.warehouse import WarehouseResource
from agg_pipeline.settings import get_settings
from agg_pipeline.writers import WriteContext, WriteReport

# A backfill over many partitions is one run, and each run writes its whole window with a
# few set-based statements (one transaction per chunk of days): the per-run overhead of
# Dagster (~2.5-3 s) is paid once, not once per partition. `--partition-range` on the CLI
# requires exactly this policy.
BACKFILL = dg.BackfillPolicy.single_run()


def partition_window(context: dg.AssetExecutionContext) -> Window:
    """The run's whole time window: one partition, or the range of a backfill run."""
    tw = context.partition_time_window
    return Window(tw.start, tw.end)


def write_context(warehouse: WarehouseResource) -> WriteContext:
    catalogue = get_catalogue()
    return WriteContext(warehouse, readings_source(catalogue), catalogue, get_settings())


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "_no rows_"
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = []
        for h in headers:
            v = row[h]
            cells.append(f"{v:.6g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def materialize_result(
    context: dg.AssetExecutionContext, report: WriteReport
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
    if report.new_sensors:
        metadata["new_sensors_registered"] = dg.MetadataValue.int(report.new_sensors)
    if report.median_status:
        metadata["median_status"] = dg.MetadataValue.json(dict(report.median_status))
    if report.notes:
        metadata["notes"] = dg.MetadataValue.md("\n".join(f"- {n}" for n in report.notes))
        for note in report.notes:
            context.log.warning(note) if "kept" in note or "NULL" in note else context.log.info(
                note
            )
    context.log.info(
        f"{report.table} {report.window}: {report.rows_written} rows written "
        f"({report.rows_deleted} replaced), {len(report.sensors)} series"
    )
    return dg.MaterializeResult(metadata=metadata)
