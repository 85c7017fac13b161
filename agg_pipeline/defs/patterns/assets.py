"""Six daily pattern detectors over the home-automation event stream.

Five detectors read the day's events once (one op, five assets, subsettable); the anomaly
detector reads the time-based aggregates of the same day and the 14 days before through a
partition mapping - never 14 days of raw events. Pattern detection is the one place raw
rows come to Python (no SQL or Flux expresses it), streamed in bounded chunks.
"""

from collections.abc import Iterator
from datetime import date, datetime, timedelta

import dagster as dg
import sqlalchemy as sa

from agg_pipeline.config.catalogue import get_catalogue
from agg_pipeline.core import detectors as detect
from agg_pipeline.core.windows import Window
from agg_pipeline.defs import partitions
from agg_pipeline.defs.common import BACKFILL, markdown_table, partition_window
from agg_pipeline.defs.loaded import SETTINGS
from agg_pipeline.influx import sink as influx_sink
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.serving import patterns
from agg_pipeline.warehouse import healing, versions
from agg_pipeline.warehouse import pattern_inputs as inputs
from agg_pipeline.warehouse.engine import WarehouseResource

_settings = SETTINGS  # (defs/loaded.py)
_catalogue = get_catalogue()
BASELINE_DAYS = healing.PATTERN_BASELINE_DAYS
CHUNK_ROWS = 20_000  # events fetched per round trip (server-side cursor)

raw_events = dg.AssetSpec(
    key="raw_events",
    description="Home-automation state changes: `raw.events` (time, entity_id, domain, "
    "area_id, state), written by the home's recorder (not by agg_pipeline).",
    partitions_def=partitions.daily,
    group_name="sources",
    kinds={"postgres"},
)

EVENT_DETECTORS = ("time_based", "co_occurrence", "sequence", "room_based", "duration")
_DOCS = {
    "time_based": detect.time_based,
    "co_occurrence": detect.co_occurrence,
    "sequence": detect.sequences,
    "room_based": detect.room_based,
    "duration": detect.durations,
    "anomaly": detect.anomalies,
}


_BY_0300 = dg.FreshnessPolicy.cron(
    deadline_cron="0 3 * * *", lower_bound_delta=timedelta(hours=3), timezone=_settings.timezone
)


def _spec(name: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        f"pattern_{name}_daily",
        deps=[raw_events],
        freshness_policy=_BY_0300,
        group_name="patterns",
        kinds={"postgres"},
        code_version="1",
        description=f"`bi.pattern_{name}_daily`, one row per (day, "
        f"{patterns.DETECTORS[name].key}). " + (_DOCS[name].__doc__ or ""),
    )


def rules() -> detect.EventRules:
    return detect.EventRules()


def _days(window: Window) -> list[date]:
    zone = _settings.zone
    first = window.start.astimezone(zone).date()
    last = window.end.astimezone(zone).date()
    return [first + timedelta(days=i) for i in range((last - first).days)]


def _start(day: date) -> datetime:
    """The daily partition's start (its data version's key)."""
    return datetime.combine(day, datetime.min.time(), tzinfo=_settings.zone)


def load_day(
    conn: sa.Connection, day: date, latest_allowed: datetime
) -> tuple[list[detect.Event], dict[str, detect.Event]]:
    """The day's events (streamed) and each entity's last event before the day."""
    zone = _settings.zone
    start = datetime.combine(day, datetime.min.time(), tzinfo=zone)
    end = start + timedelta(days=1)
    events = [detect.Event(*row) for row in inputs.day_events(conn, start, end, CHUNK_ROWS)]
    carried = {
        row[1]: detect.Event(*row)
        for row in inputs.last_events_before(conn, start, healing.PATTERN_CARRY_DAYS)
    }
    return events, carried


def run_detector(name: str, prepared: detect.DayEvents, r: detect.EventRules) -> list[dict]:
    zone = _settings.zone
    if name == "time_based":
        return detect.time_based(prepared, zone)
    if name == "co_occurrence":
        return detect.co_occurrence(prepared, zone, r)
    if name == "sequence":
        return detect.sequences(prepared, r)
    if name == "room_based":
        return detect.room_based(prepared, zone, r)
    return detect.durations(prepared)


@dg.multi_asset(
    name="pattern_detectors",
    specs=[_spec(n) for n in EVENT_DETECTORS],
    partitions_def=partitions.daily,
    backfill_policy=BACKFILL,
    can_subset=True,
    pool="bi.patterns",
)
def pattern_detectors(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, influx: InfluxResource
) -> Iterator[dg.MaterializeResult]:
    selected = [
        n
        for n in EVENT_DETECTORS
        if dg.AssetKey(f"pattern_{n}_daily") in context.selected_asset_keys
    ]
    zone, r = _settings.zone, rules()
    written = {n: 0 for n in selected}
    counts: dict[str, int] = {}
    previews: dict[str, list[dict]] = {}
    engine = warehouse.get_engine()
    sunk: dict[str, int] = {}
    for day in _days(partition_window(context)):
        day_rows: dict[str, list[dict]] = {}
        with engine.begin() as conn:
            computed_from = versions.watermark(conn)  # before any event is read
            now = inputs.database_now(conn)
            latest = now + timedelta(seconds=_settings.future_tolerance_seconds)
            events, carried = load_day(conn, day, latest)
            prepared = detect.prepare(events, day, zone, r, carried, latest)
            for key, n in prepared.counts.items():
                counts[key] = counts.get(key, 0) + n
            for name in selected:
                rows = [{"day": day, **row} for row in run_detector(name, prepared, r)]
                written[name] += patterns.replace_days(conn, patterns.DETECTORS[name], [day], rows)
                previews[name] = day_rows[name] = rows
            # Released days keep their rows (replace_days) and are current all the same.
            versions.record(
                conn, {f"pattern_{n}_daily": [_start(day)] for n in selected}, computed_from
            )
        # After the commit: InfluxDB gets what PostgreSQL holds.
        for name, rows in day_rows.items():
            n = influx_sink.write_patterns(influx, _catalogue, patterns.DETECTORS[name], rows)
            if n is not None:
                sunk[name] = sunk.get(name, 0) + n
        context.log.info(
            f"{day}: {prepared.counts['events']} events, "
            f"{prepared.counts['activations']} activations"
        )
    for name in selected:
        top = sorted(
            previews.get(name, []),
            key=lambda row: -row.get("confidence", row.get("activity_level", 0) or 0),
        )[:5]
        yield dg.MaterializeResult(
            asset_key=f"pattern_{name}_daily",
            metadata={
                "rows_written": written[name],
                **({"influx_points_written": sunk.get(name, 0)} if sunk else {}),
                "events": dg.MetadataValue.json(counts),
                "preview": dg.MetadataValue.md(
                    markdown_table([{k: str(v)[:60] for k, v in row.items()} for row in top])
                ),
            },
        )


@dg.asset(
    partitions_def=partitions.daily,
    deps=[
        dg.AssetDep(
            "pattern_time_based_daily",
            partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-BASELINE_DAYS),
        )
    ],
    backfill_policy=BACKFILL,
    freshness_policy=_BY_0300,
    group_name="patterns",
    kinds={"postgres"},
    code_version="1",
    pool="bi.patterns",
    description="`bi.pattern_anomaly_daily`, one row per (day, entity) flagged. The day's "
    "activations against the entity's trailing baseline: the time-based aggregates of the "
    f"{BASELINE_DAYS} days before (read through a partition mapping, not from raw events). "
    + (detect.anomalies.__doc__ or ""),
)
def pattern_anomaly_daily(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, influx: InfluxResource
) -> dg.MaterializeResult:
    materialized = context.instance.get_materialized_partitions(
        dg.AssetKey("pattern_time_based_daily")
    )
    engine, r = warehouse.get_engine(), rules()
    written, flagged = 0, []
    for day in _days(partition_window(context)):
        window = [day - timedelta(days=i) for i in range(BASELINE_DAYS + 1)]
        with engine.begin() as conn:
            computed_from = versions.watermark(conn)  # before the baseline is read
            rows = inputs.time_based_counts(conn, window)
            by_day: dict[date, dict[str, int]] = {}
            for d, entity, n in rows:
                by_day.setdefault(d, {})[entity] = n
            baseline = {
                d: by_day.get(d, {})
                for d in window[1:]
                if d.isoformat() in materialized or d in by_day
            }
            found = detect.anomalies(by_day.get(day, {}), baseline, r)
            written += patterns.replace_days(
                conn, patterns.DETECTORS["anomaly"], [day], [{"day": day, **f} for f in found]
            )
            flagged += [{"day": str(day), **f} for f in found]
            versions.record(conn, {"pattern_anomaly_daily": [_start(day)]}, computed_from)
        influx_sink.write_patterns(
            influx, _catalogue, patterns.DETECTORS["anomaly"], [{"day": day, **f} for f in found]
        )
    return dg.MaterializeResult(
        metadata={
            "rows_written": written,
            "baseline_days_max": BASELINE_DAYS,
            "preview": dg.MetadataValue.md(
                markdown_table(
                    [
                        {
                            k: f[k]
                            for k in (
                                "day",
                                "entity_id",
                                "anomaly_type",
                                "severity",
                                "baseline_deviation",
                            )
                        }
                        for f in flagged[:8]
                    ]
                )
            ),
        }
    )
