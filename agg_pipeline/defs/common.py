"""What every warehouse asset does around its writer: window in; metadata and checks out."""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

import dagster as dg
import sqlalchemy as sa

from agg_pipeline.config.catalogue import get_catalogue
from agg_pipeline.config.settings import get_settings
from agg_pipeline.core.windows import Window
from agg_pipeline.defs import partitions
from agg_pipeline.defs.loaded import BACKFILL_PARTITIONS_PER_RUN
from agg_pipeline.influx import sink as influx_sink
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.sources import readings_source
from agg_pipeline.warehouse import figures as table_figures
from agg_pipeline.warehouse import statements, versions
from agg_pipeline.warehouse.engine import (
    LockWaitTimeout,
    WarehouseResource,
    is_transient,
    lock_wait_log,
    pg_message,
    sqlstate,
)
from agg_pipeline.warehouse.writes.readings import WriteContext, WriteReport

# A backfill over many partitions is one run, and each run writes its whole window with a
# few set-based statements (one transaction per chunk of days): the per-run overhead of
# Dagster (~2.5-3 s) is paid once, not once per partition. `--partition-range` on the CLI
# requires exactly this policy. AGG_PIPELINE_BACKFILL_PARTITIONS_PER_RUN=N splits a
# daemon-launched backfill into runs of N partitions that the run queue runs side by side
# (README, Performance: parallel backfills).
BACKFILL = (
    dg.BackfillPolicy.multi_run(max_partitions_per_run=BACKFILL_PARTITIONS_PER_RUN)
    if BACKFILL_PARTITIONS_PER_RUN
    else dg.BackfillPolicy.single_run()
)

# Transient database errors (connection lost, deadlock, serialization failure: see
# warehouse.is_transient) are retried with backoff; anything else fails the run at once
# with PostgreSQL's message. Lock waits are retried in-process (warehouse.LockWaitTimeout).
MAX_RETRIES = 3


def partition_window(context: dg.AssetExecutionContext) -> Window:
    """The run's whole time window: one partition, or the range of a backfill run.

    Both ends of the range must be real partition keys (``dagster asset materialize
    --partition 2026-11-01-10:30`` would otherwise write the 11:00 hour): checked here,
    before anything is read or written.
    """
    pdef = context.assets_def.partitions_def
    if isinstance(pdef, dg.TimeWindowPartitionsDefinition):
        keys = context.partition_key_range
        asset = ", ".join(sorted(k.to_user_string() for k in context.selected_asset_keys))
        for key in dict.fromkeys((keys.start, keys.end)):
            partitions.check_partition_key(pdef, key, asset)
    tw = context.partition_time_window
    return Window(tw.start, tw.end)


def write_context(
    warehouse: WarehouseResource, influx: InfluxResource | None = None
) -> WriteContext:
    catalogue, settings = get_catalogue(), get_settings()
    source = readings_source(
        catalogue,
        warehouse.get_engine(),
        settings.parallelism,
        warehouse.work_mem,
        influx,
        plain_1m=settings.plain_1m,
        hour_values=settings.hour_values,
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


_Written = TypeVar("_Written")  # a WriteReport, or one per asset (the daily op's dict)


def write_with_retries(
    context: dg.AssetExecutionContext, write: Callable[[], _Written]
) -> _Written:
    settings = get_settings()
    token = lock_wait_log.set(context.log.warning)  # lock waits go to the run's log
    try:
        waits = 0
        while True:
            try:
                return write()
            except LockWaitTimeout as exc:
                # A chunk's statement waited out the lock timeout and rolled back; the
                # chunks before it are committed and the write is idempotent: run it again.
                waits += 1
                if exc.exhausted or waits > settings.lock_retries:
                    raise dg.Failure(
                        description=(
                            f"gave up waiting for a lock: {exc}. Each wait lasts "
                            f"AGG_PIPELINE_LOCK_TIMEOUT_SECONDS={settings.lock_timeout_seconds:g}"
                            f", retried AGG_PIPELINE_LOCK_RETRIES={settings.lock_retries} times. "
                            "End the session holding it (pg_terminate_backend(pid)) or raise "
                            "the settings, then re-run: nothing of this chunk was written."
                        ),
                        metadata={"lock": exc.what},
                    ) from exc
                context.log.warning(f"{exc}; trying the write again ({waits}/"
                                    f"{settings.lock_retries})")  # fmt: skip
    except sa.exc.DBAPIError as exc:
        code, message = sqlstate(exc), pg_message(exc)
        if is_transient(exc):
            # Exponential backoff with jitter: 5 s, 10 s, 20 s (+/- 20 %).
            wait = 5 * 2**context.retry_number * random.uniform(0.8, 1.2)
            context.log.warning(
                f"transient database error ({code or 'connection lost'}), retrying in "
                f"{wait:.0f} s: {message}"
            )
            raise dg.RetryRequested(max_retries=MAX_RETRIES, seconds_to_wait=wait) from exc
        raise dg.Failure(
            description=f"PostgreSQL error {code or ''}: {message} (not retried: the same "
            "write would fail the same way; nothing of the failed chunk was written)",
            metadata={"sqlstate": code or "", "postgres_message": message},
        ) from exc
    finally:
        lock_wait_log.reset(token)


_MAX_MATERIALIZATION_PAGES = 20


def _span(first: datetime | None, last: datetime | None) -> str:
    return f"{first.isoformat()} .. {last.isoformat()}" if first and last else "no readings"


def _run_partitions(context: dg.AssetExecutionContext) -> dict[str, Window]:
    """The run's partitions and their windows, in order."""
    pdef = context.assets_def.partitions_def
    if pdef is None or not isinstance(pdef, dg.TimeWindowPartitionsDefinition):
        return {}
    windows = {}
    for key in context.partition_keys:
        tw = pdef.time_window_for_partition_key(key)
        windows[key] = Window(tw.start, tw.end)
    return windows


def _previous_materializations(
    context: dg.AssetExecutionContext, key: dg.AssetKey, partitions: list[str]
) -> dict[str, float]:
    """When each of ``partitions`` was last materialized before this run (if ever)."""
    latest: dict[str, float] = {}
    cursor = None
    for _ in range(_MAX_MATERIALIZATION_PAGES):  # newest first: the first pages suffice
        if not partitions or len(latest) == len(partitions):
            break
        page = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(key, asset_partitions=partitions), limit=1000, cursor=cursor
        )
        for record in page.records:  # newest first
            if record.partition_key:
                latest.setdefault(record.partition_key, record.timestamp)
        if not page.has_more:
            break
        cursor = page.cursor
    return latest


def _late_hours(
    conn: sa.Connection, windows: dict[str, Window]
) -> dict[str, list[tuple[datetime, int, datetime]]]:
    """Per partition: the late rows recorded for its hours (hour, rows, last arrival)."""
    if not windows:
        return {}
    keys = list(windows)
    starts = [windows[k].start for k in keys]
    out: dict[str, list[tuple[datetime, int, datetime]]] = {}
    for hour, rows, last in table_figures.late_hours(
        conn, min(starts), max(w.end for w in windows.values())
    ):
        i = bisect.bisect_right(starts, hour) - 1
        if i >= 0 and hour < windows[keys[i]].end:
            out.setdefault(keys[i], []).append((hour, rows, last))
    return out


def _late_rows(
    hours: dict[str, list[tuple[datetime, int, datetime]]], previous: dict[str, float]
) -> dict[str, tuple[int, datetime]]:
    """Per partition: late rows recorded for its hours that arrived after it was last
    materialized. A partition never materialized before has none: its rows, however late
    they were loaded, are read for the first time (a first backfill corrects nothing)."""
    out: dict[str, tuple[int, datetime]] = {}
    for key, found in hours.items():
        for _, rows, last in found:
            if key not in previous or last.timestamp() <= previous[key]:
                continue
            n, latest = out.get(key, (0, last))
            out[key] = (n + int(rows), max(latest, last))
    return out


def _partition_figures(
    conn: sa.Connection, table: str, windows: dict[str, Window]
) -> dict[str, dict[str, object]]:
    """rows_written, series and time_span of each partition, from what the table holds."""
    if table not in table_figures.PARTITION_FIGURES or not windows:
        return {}
    timed, is_date = table_figures.PARTITION_FIGURES[table][2:]
    zone = get_settings().zone
    first = next(iter(windows.values()))
    by_bucket: dict[object, str]
    if is_date:
        by_bucket = {w.start.astimezone(zone).date(): k for k, w in windows.items()}
        lo, hi = min(by_bucket), max(w.end for w in windows.values()).astimezone(zone).date()
    else:
        by_bucket = {w.start: k for k, w in windows.items()}
        lo, hi = first.start, max(w.end for w in windows.values())
    rows = table_figures.bucket_figures(conn, table, lo, hi, first.start)
    found = {by_bucket[b]: (int(n), int(m), t0, t1) for b, n, m, t0, t1 in rows if b in by_bucket}
    out: dict[str, dict[str, object]] = {}
    for k in windows:
        n, n_series, t0, t1 = found.get(k, (0, 0, None, None))
        out[k] = {"rows_written": n, "series": n_series}
        if timed:
            out[k]["time_span"] = _span(t0, t1)
    return out


def materialize_result(
    context: dg.AssetExecutionContext,
    report: WriteReport,
    warehouse: WarehouseResource,
    checks: Sequence[dg.AssetCheckResult] = (),
    asset_key: str | None = None,
) -> dg.MaterializeResult:
    """Metadata every materialization records, and a log line an operator can read.

    A multi-partition run (a backfill) records its totals on every partition, as Dagster
    does for every range run: ``totals_of`` says so, and each partition also gets its own
    ``partition_window``, ``partition_rows_written``, ``partition_series``,
    ``partition_time_span`` and ``partition_late_rows_found``.
    """
    key = dg.AssetKey.from_user_string(asset_key) if asset_key else context.asset_key
    metadata: dict[str, object] = {
        "table": dg.MetadataValue.text(report.table),
        "window": dg.MetadataValue.text(str(report.window)),
        "reason": dg.MetadataValue.text(run_reason(context)),
        "rows_written": dg.MetadataValue.int(report.rows_written),
        "rows_replaced": dg.MetadataValue.int(report.rows_deleted),
        "series": dg.MetadataValue.int(len(report.sensors)),
        "time_span": dg.MetadataValue.text(_span(report.first_reading_at, report.last_reading_at)),
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
    if report.bad_devices:
        # Which names were refused (cut and escaped), so the operator can find the rows.
        metadata["bad_devices"] = dg.MetadataValue.json(dict(report.bad_devices))
    windows = _run_partitions(context)
    with warehouse.get_engine().connect() as conn:
        hours = _late_hours(conn, windows)
        figures = _partition_figures(conn, report.table, windows) if len(windows) > 1 else {}
    # Only partitions with late rows recorded need their last materialization: asking the
    # instance for every partition of a range run read back (and deserialized) each
    # one's previous materialization event, ~0.4-0.8 s per asset for a week of hours.
    late = _late_rows(hours, _previous_materializations(context, key, list(hours)))
    late_rows = sum(n for n, _ in late.values())
    if late_rows:
        # Why a correction ran: readings that arrived after their hour had settled.
        metadata["late_rows_found"] = dg.MetadataValue.int(late_rows)
        last_late = max(t for _, t in late.values())
        metadata["last_late_arrival"] = dg.MetadataValue.text(last_late.isoformat())
    if report.influx_points_written is not None:
        metadata["influx_points_written"] = dg.MetadataValue.int(report.influx_points_written)
    if report.new_sensors:
        metadata["new_sensors_registered"] = dg.MetadataValue.int(report.new_sensors)
    if report.median_status:
        metadata["median_status"] = dg.MetadataValue.json(dict(report.median_status))
    if report.read_from:
        # bi.hour_values (no second raw pass) or raw, per chunk: issue 15's one raw pass.
        metadata["read_from"] = dg.MetadataValue.json(dict(report.read_from))
    if report.stage_paths:
        metadata["stage_1m_paths"] = dg.MetadataValue.json(dict(report.stage_paths))
        context.log.info(f"1-minute pass per chunk: {dict(report.stage_paths)}")
    if report.info:
        metadata["condition_ranges"] = dg.MetadataValue.md("\n".join(f"- {n}" for n in report.info))
        for line in report.info:
            context.log.info(line)
    if report.notes:
        metadata["notes"] = dg.MetadataValue.md("\n".join(f"- {n}" for n in report.notes))
        for note in report.notes:
            context.log.warning(note)
    if report.rejected.get("bad_device"):
        context.log.warning(
            f"{report.rejected['bad_device']} rows rejected as bad_device (name empty, over "
            f"{statements.MAX_NAME_BYTES} bytes or with control characters): "
            + ", ".join(report.bad_devices)
        )
    if len(windows) > 1:
        # Dagster records a range run's metadata on every partition: say that these are
        # the run's totals, and give each partition its own figures next to them.
        metadata["totals_of"] = dg.MetadataValue.text(
            f"the whole run: {len(windows)} partitions, {report.window}; this partition's "
            "own figures are the partition_* entries"
        )
        for pk, w in windows.items():
            own: dict[str, object] = {"partition_window": str(w)}
            own.update({f"partition_{k}": v for k, v in figures.get(pk, {}).items()})
            own["partition_late_rows_found"] = late[pk][0] if pk in late else 0
            context.add_asset_metadata(own, asset_key=key, partition_key=pk)
    context.log.info(
        f"{report.table} {report.window}: {report.rows_written} rows written "
        f"({report.rows_deleted} replaced), {len(report.sensors)} series"
        + (f"; {late_rows} late rows arrived since the last run" if late_rows else "")
    )
    _note_blocking_checks(context, key, checks, warehouse, report.window)
    return dg.MaterializeResult(asset_key=asset_key, metadata=metadata, check_results=list(checks))


def _note_blocking_checks(
    context: dg.AssetExecutionContext,
    key: dg.AssetKey,
    checks: Sequence[dg.AssetCheckResult],
    warehouse: WarehouseResource,
    window: Window,
) -> None:
    """Record whether a blocking check failed on the partitions just written: the healer
    holds their children while one did (``healing.py``)."""
    blocking = {s.name for s in context.assets_def.check_specs if s.asset_key == key and s.blocking}
    if not blocking:
        return
    failed = sorted(
        r.check_name
        for r in checks
        if r.check_name in blocking
        and not r.passed
        and (r.asset_key is None or dg.AssetKey.from_coercible(r.asset_key) == key)
    )
    with warehouse.get_engine().begin() as conn:
        versions.note_blocking_checks(
            conn, key.to_user_string(), window, failed[0] if failed else None
        )
