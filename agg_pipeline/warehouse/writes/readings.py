"""How each level of the hierarchy is written into the warehouse.

Every write follows one pattern, per chunk of the run's window (``chunk_days`` local days):

1. open a transaction holding advisory locks on (target table, local day) for the chunk;
2. stage the new rows in a temp table (from the raw source, or merged from the level below);
3. delete the target's rows inside the chunk, insert the staged rows; commit.

So a partition write is atomic (a failure leaves the old rows), idempotent (re-running
replaces, never appends), and two runs of the same window serialize: the second computes
from what the first committed. When the source has no rows at all for a chunk but the target
does (raw readings or 1-minute windows already removed by retention), the existing rows are
kept and the report says so, instead of wiping history.

Raw readings are read once per level that needs them: the 1-minute pass also yields each
hour's exact median (``bi.hourly_medians``), and one daily pass yields both the daily
medians and the condition shares.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from agg_pipeline.config.catalogue import Catalogue
from agg_pipeline.config.settings import Settings
from agg_pipeline.core import conditions as cond
from agg_pipeline.core import hierarchy
from agg_pipeline.core.hierarchy import Grain, Level, Median
from agg_pipeline.core.windows import Window
from agg_pipeline.sources.base import ReadingsSource, StageContext
from agg_pipeline.warehouse import levels, realtime, retention, statements, versions
from agg_pipeline.warehouse.engine import WarehouseResource

log = logging.getLogger(__name__)

# In the order a raw row is judged (stage_partials_1m.sql); bad_device: see
# statements.MAX_NAME_BYTES.
REJECT_REASONS = (
    "bad_device",
    "unknown_field",
    "future",
    "null",
    "nan",
    "inf",
    "out_of_bounds",
    "duplicate",
)
PREVIEW_ROWS = 8


@dataclass
class WriteReport:
    """What one asset run wrote: the facts that go into materialization metadata."""

    table: str
    window: Window
    rows_written: int = 0
    rows_deleted: int = 0
    sensors: set[int] = field(default_factory=set)
    raw_rows_read: int | None = None
    rejected: Counter = field(default_factory=Counter)
    unknown_fields: Counter = field(default_factory=Counter)
    bad_devices: Counter = field(default_factory=Counter)  # shown name -> rows rejected
    new_sensors: int = 0
    median_status: Counter = field(default_factory=Counter)
    # The 1-minute pass per chunk: 'plain', 'exact', 'plain+exact' chunks, and
    # 'exact_hours' (the (device, field, hour) groups re-read exactly after a plain pass).
    stage_paths: Counter = field(default_factory=Counter)
    # Where each chunk's medians / condition shares were read: 'hour_values' (kept by
    # readings_1m, bi.hour_values), 'raw', or 'source' (a source with one path).
    read_from: Counter = field(default_factory=Counter)
    first_reading_at: datetime | None = None
    last_reading_at: datetime | None = None
    chunks: int = 0
    kept_chunks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth a warning
    info: list[str] = field(default_factory=list)  # informational (e.g. ranges in force)
    preview: list[dict] = field(default_factory=list)
    influx_points_written: int | None = None  # the InfluxDB sink, when configured

    def saw_readings(self, first: datetime | None, last: datetime | None) -> None:
        if first and (self.first_reading_at is None or first < self.first_reading_at):
            self.first_reading_at = first
        if last and (self.last_reading_at is None or last > self.last_reading_at):
            self.last_reading_at = last

    def finish(self) -> WriteReport:
        if self.kept_chunks:
            self.notes.append(
                f"{len(self.kept_chunks)} chunk(s) had no source rows (removed by retention?): "
                f"existing rows kept: {', '.join(self.kept_chunks[:3])}"
                + (" ..." if len(self.kept_chunks) > 3 else "")
            )
        if self.median_status.get("inconsistent"):
            self.notes.append(
                f"{self.median_status['inconsistent']} median(s) left NULL: raw readings "
                "changed since the level below was built (late data); they fill in when it "
                "re-runs"
            )
        if self.median_status.get("absent") or self.median_status.get("kept"):
            self.notes.append(
                "raw readings no longer retained for part of the window: "
                f"{self.median_status.get('kept', 0)} earlier median(s) kept, "
                f"{self.median_status.get('absent', 0)} absent"
            )
        return self


@dataclass(frozen=True)
class WriteContext:
    warehouse: WarehouseResource
    source: ReadingsSource
    catalogue: Catalogue
    settings: Settings

    @property
    def zone(self) -> ZoneInfo:
        return self.settings.zone

    def stage_context(self, conn: sa.Connection) -> StageContext:
        now = conn.execute(sa.text("SELECT now()")).scalar_one()
        return StageContext(
            timezone=self.settings.timezone,
            latest_allowed=now + timedelta(seconds=self.settings.future_tolerance_seconds),
            max_gap_seconds=self.settings.max_gap_seconds,
        )


def _shown_field(name: str) -> str:
    return name if len(name) <= 63 else statements.shown_name(name)


def _has_rows(
    conn: sa.Connection, table: str, key: str, chunk: Window, zone: ZoneInfo | None = None
) -> bool:
    lo, hi = (chunk.start, chunk.end) if zone is None else chunk.local_dates(zone)
    t, k = statements.quote_ident(table), statements.quote_ident(key)
    sql = f"SELECT EXISTS (SELECT 1 FROM {t} WHERE {k} >= :lo AND {k} < :hi)"
    return bool(conn.execute(sa.text(sql), {"lo": lo, "hi": hi}).scalar_one())


def _raw_released(conn: sa.Connection, ctx: WriteContext, chunk: Window) -> bool:
    """True when retention released raw readings of a day in ``chunk``: its rollups are
    final, and recomputing them from what is left of raw would lose data."""
    if not ctx.catalogue.raw_in_postgres:
        return False
    source_table = ctx.catalogue.source.table
    return bool(retention.released_days(conn, source_table, chunk.local_days(ctx.zone)))


def _closed_part(conn: sa.Connection, chunk: Window, step: timedelta) -> Window | None:
    """The part of ``chunk`` whose ``step``-long windows have closed (database clock).

    A still-open window is never written: a reader, a check or the InfluxDB sink would take
    a partial value for final. The schedules come back a minute later to finish it."""
    now = conn.execute(sa.text("SELECT now()")).scalar_one()
    closed_until = _floor(now, step, origin=chunk.start)
    if chunk.end <= closed_until:
        return chunk
    if closed_until <= chunk.start:
        return None
    return Window(chunk.start, closed_until)


def _keep_released(report: WriteReport, chunk: Window) -> None:
    report.kept_chunks.append(f"{chunk} (raw readings released by retention: rows kept)")


def _preview(conn: sa.Connection, level: Level, chunk: Window, zone: ZoneInfo | None) -> list[dict]:
    """The last few rows written in the chunk, readable (device and field, not ids)."""
    lo, hi = (chunk.start, chunk.end) if zone is None else chunk.local_dates(zone)
    t, k = statements.quote_ident(level.table), statements.quote_ident(level.bucket_column)
    mean_col = level.mean_column
    rows = conn.execute(
        sa.text(
            f"SELECT dv.device_code AS device, s.field, t.{k} AS bucket, t.sample_count AS n, "
            f"t.{mean_col} AS mean, t.min_value AS min, t.max_value AS max "
            f"FROM {t} AS t JOIN iot.sensors AS s ON s.id = t.sensor_id "
            "JOIN iot.devices AS dv ON dv.id = s.device_id "
            f"WHERE t.{k} >= :lo AND t.{k} < :hi "
            f"ORDER BY t.{k} DESC, dv.device_code, s.field LIMIT {PREVIEW_ROWS}"
        ),
        {"lo": lo, "hi": hi},
    ).mappings()
    return [dict(r) for r in rows]


# --------------------------------------------------------------------------------------
# 1-minute windows (and hourly medians), from raw readings
# --------------------------------------------------------------------------------------

_JOIN_SENSORS = """
JOIN iot.devices AS dv ON dv.device_code = st.device
JOIN iot.sensors AS s ON s.device_id = dv.id AND s.field = st.field
"""
_INSERT_1M = f"""
INSERT INTO bi.readings_1m (sensor_id, window_start, sample_count, mean_value, min_value,
                            max_value, m2, first_reading_at, last_reading_at)
SELECT s.id, st.window_start, st.sample_count, st.mean_value, st.min_value, st.max_value,
       st.m2, st.first_reading_at, st.last_reading_at
FROM stage_1m AS st {_JOIN_SENSORS}
WHERE st.kind = 'minute' AND st.window_start < :closed_until
"""
_INSERT_HOURLY_MEDIANS = f"""
INSERT INTO bi.hourly_medians (sensor_id, hour_start, reading_count, median_value)
SELECT s.id, st.window_start, st.sample_count, st.median_value
FROM stage_1m_groups AS st {_JOIN_SENSORS}
WHERE st.kind = 'hour'
"""
# The hour's valid readings, for the levels above (migration 023; sources that keep none
# stage NULLs).
_INSERT_HOUR_VALUES = f"""
INSERT INTO bi.hour_values (sensor_id, hour_start, reading_count, raw_rows, times, vals)
SELECT s.id, st.window_start, st.sample_count, st.hour_rows, st.times, st.vals
FROM stage_1m_groups AS st {_JOIN_SENSORS}
WHERE st.kind = 'hour' AND st.vals IS NOT NULL
"""


# stage_1m holds one row per minute (the bulk: on a sparse fleet about one per reading)
# and a few per hour group (its median and values, its rejects). Every question but the
# minutes' own insert is asked of the few, or of one aggregate of the minutes per (device,
# field): a scan of the minutes per question cost ~4-10 s for a day of 10,000 series at
# 0.01 Hz (8.5 M minutes). The sums below are over both parts, so they hold whichever kind
# of row a source counts a reason in.
_SPLIT_GROUPS = (
    "CREATE TEMP TABLE stage_1m_groups ON COMMIT DROP AS "
    "SELECT * FROM stage_1m WHERE kind <> 'minute'"
)
_TOTALS = (
    "coalesce(sum(raw_rows), 0) AS raw_rows, "
    + ", ".join(f'coalesce(sum("{r}"), 0) AS "{r}"' for r in REJECT_REASONS)
    + ", min(first_reading_at) AS first_at, max(last_reading_at) AS last_at"
)
_STAGE_PAIRS = (
    "CREATE TEMP TABLE stage_1m_pairs ON COMMIT DROP AS "
    f"SELECT device, field, known, TRUE AS has_minutes, {_TOTALS} "
    "FROM stage_1m WHERE kind = 'minute' GROUP BY 1, 2, 3 "
    f"UNION ALL SELECT device, field, known, FALSE, {_TOTALS} "
    "FROM stage_1m_groups GROUP BY 1, 2, 3"
)
_SUMMARY = (
    "SELECT field, known, sum(raw_rows) AS raw_rows, "
    + ", ".join(f'sum("{r}") AS "{r}"' for r in REJECT_REASONS)
    + ", min(first_at) AS first_at, max(last_at) AS last_at FROM stage_1m_pairs GROUP BY 1, 2"
)


def write_readings_1m(ctx: WriteContext, window: Window) -> WriteReport:
    """Replace ``bi.readings_1m`` (and ``bi.hourly_medians``) inside ``window``."""
    report = WriteReport("bi.readings_1m", window, raw_rows_read=0)
    for chunk in window.chunks(ctx.zone, ctx.settings.chunk_days):
        report.chunks += 1
        with ctx.warehouse.locked_transaction(report.table, chunk.local_days(ctx.zone)) as conn:
            # Before any raw row is read (versions.py, rule 2).
            computed_from = versions.watermark(conn)
            if _raw_released(conn, ctx, chunk):
                _keep_released(report, chunk)
                # Final (raw released): current, so never healed in a loop.
                versions.record(conn, {"readings_1m": versions.hours_in(chunk)}, computed_from)
                continue
            path = ctx.source.stage_partials_1m(conn, chunk, ctx.stage_context(conn))
            if path:
                kind, _, hours = path.partition(":")
                report.stage_paths[kind] += 1
                if hours:
                    report.stage_paths["exact_hours"] += int(hours)
            # A temp table has no statistics until analyzed: the planner then guessed a
            # group per ten rows and sorted the minutes (external merge, 10-12 s for the
            # 10,000 pairs of 8.5 M minutes) where a hash aggregate takes about a second.
            conn.execute(sa.text("ANALYZE stage_1m"))
            conn.execute(sa.text(_SPLIT_GROUPS))
            conn.execute(sa.text(_STAGE_PAIRS))
            summary = conn.execute(sa.text(_SUMMARY)).mappings().all()
            raw_rows = 0
            for row in summary:
                raw_rows += int(row["raw_rows"])
                for reason in REJECT_REASONS:
                    report.rejected[reason] += int(row[reason] or 0)
                if not row["known"] and row["unknown_field"]:
                    # Only the rows rejected as unknown_field (a bad device's rows are
                    # bad_device); a long unknown name is shown cut.
                    report.unknown_fields[_shown_field(row["field"])] += int(row["unknown_field"])
                report.saw_readings(row["first_at"], row["last_at"])
            report.raw_rows_read += raw_rows
            for device, n in conn.execute(
                sa.text(
                    "SELECT device, sum(bad_device) FROM stage_1m_pairs WHERE bad_device > 0 "
                    "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10"
                )
            ):
                report.bad_devices[statements.shown_name(device)] += int(n)

            if raw_rows == 0 and _has_rows(conn, report.table, "window_start", chunk):
                report.kept_chunks.append(str(chunk))
                # As good as it can be (raw gone): current, so never healed in a loop.
                versions.record(conn, {"readings_1m": versions.hours_in(chunk)}, computed_from)
                continue

            pairs = conn.execute(
                sa.text("SELECT DISTINCT device, field FROM stage_1m_pairs WHERE has_minutes")
            ).all()
            report.new_sensors += ctx.warehouse.register_sensors(
                ctx.catalogue, [(p[0], p[1]) for p in pairs]
            )
            bounds = {"s": chunk.start, "e": chunk.end}
            report.rows_deleted += conn.execute(
                sa.text(
                    "DELETE FROM bi.readings_1m WHERE window_start >= :s AND window_start < :e"
                ),
                bounds,
            ).rowcount
            # Every reading is read and accounted for, but a still-open minute is not
            # written: a reader or the InfluxDB sink would take it for final. The schedule
            # comes back a minute later to finish it.
            closed = _closed_part(conn, chunk, timedelta(minutes=1))
            closed_until = closed.end if closed else chunk.start
            report.rows_written += conn.execute(
                sa.text(_INSERT_1M), {"closed_until": closed_until}
            ).rowcount
            conn.execute(
                sa.text("DELETE FROM bi.hourly_medians WHERE hour_start >= :s AND hour_start < :e"),
                bounds,
            )
            conn.execute(sa.text(_INSERT_HOURLY_MEDIANS))
            # Always cleared (values kept by an earlier run would no longer match raw);
            # refilled when the source keeps them (stage_1m has the columns then).
            conn.execute(
                sa.text("DELETE FROM bi.hour_values WHERE hour_start >= :s AND hour_start < :e"),
                bounds,
            )
            if _stage_has_hour_values(conn):
                conn.execute(sa.text(_INSERT_HOUR_VALUES))
            now = conn.execute(sa.text("SELECT now()")).scalar_one()
            realtime.advance(conn, report.table, chunk.end, _floor(now, timedelta(minutes=1)))
            report.sensors.update(
                r[0]
                for r in conn.execute(
                    sa.text(
                        "SELECT DISTINCT sensor_id FROM bi.hourly_medians "
                        "WHERE hour_start >= :s AND hour_start < :e"
                    ),
                    bounds,
                )
            )
            report.preview = _preview(conn, hierarchy.LEVEL_1M, chunk, None)
            versions.record(conn, {"readings_1m": versions.hours_in(chunk)}, computed_from)
    return report.finish()


def _stage_has_hour_values(conn: sa.Connection) -> bool:
    """Whether this transaction's stage_1m carries hour values (the InfluxDB source's has
    no such columns: its hours are aggregated in InfluxDB)."""
    return bool(
        conn.execute(
            sa.text(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = "
                "'pg_temp.stage_1m'::regclass AND attname = 'vals' AND NOT attisdropped)"
            )
        ).scalar_one()
    )


# --------------------------------------------------------------------------------------
# Merged levels: 5m from 1m; hourly from 1m; daily from hourly; weekly, monthly from daily
# --------------------------------------------------------------------------------------


# The levels (one registry: core/hierarchy.py), re-exported for the writers' callers.
LEVEL_5M = hierarchy.LEVEL_5M
LEVEL_HOURLY = hierarchy.LEVEL_HOURLY
LEVEL_DAILY = hierarchy.LEVEL_DAILY
LEVEL_WEEKLY = hierarchy.LEVEL_WEEKLY
LEVEL_MONTHLY = hierarchy.LEVEL_MONTHLY

# Median bookkeeping: 'exact' computed now; 'skipped' too many readings (setting);
# 'kept' raw gone, previous exact median kept; 'absent' raw gone and none known;
# 'inconsistent' raw rows changed since the partials (late data not yet merged): NULL
# until the level below catches up and this level re-runs. Medians come from the temp
# table stage_medians (device, field, bucket, n, median).
_STAGE_ROLLUP = """
CREATE TEMP TABLE stage_rollup ON COMMIT DROP AS
WITH merged AS ({merged})
SELECT m.sensor_id, m.bucket, m.n, m.mean, m.mn, m.mx, m.m2, m.first_at, m.last_at,
       CASE WHEN m.n > 1 THEN sqrt(m.m2 / (m.n - 1)) END AS stddev,
       CASE WHEN NOT :medians_computed THEN NULL
            WHEN md.n IS NULL THEN old.median_value
            WHEN md.n = m.n THEN md.median END AS median,
       CASE WHEN NOT :medians_computed THEN 'skipped'
            WHEN md.n IS NULL AND old.median_value IS NOT NULL THEN 'kept'
            WHEN md.n IS NULL THEN 'absent'
            WHEN md.n = m.n THEN 'exact'
            ELSE 'inconsistent' END AS median_status
FROM merged AS m
JOIN iot.sensors AS s ON s.id = m.sensor_id
JOIN iot.devices AS dv ON dv.id = s.device_id
LEFT JOIN stage_medians AS md
       ON md.device = dv.device_code AND md.field = s.field AND md.bucket = m.bucket
LEFT JOIN {target} AS old ON old.sensor_id = m.sensor_id AND old.{key} = m.bucket
      AND old.origin = 'computed'
"""
_STAGE_MERGE = "CREATE TEMP TABLE stage_merge ON COMMIT DROP AS {merged}"
_EMPTY_MEDIANS = (
    "CREATE TEMP TABLE stage_medians ON COMMIT DROP AS SELECT NULL::text AS device, "
    "NULL::text AS field, NULL::{bucket_type} AS bucket, NULL::bigint AS n, "
    "NULL::float8 AS median WHERE false"
)
_HOURLY_MEDIANS = """
CREATE TEMP TABLE stage_medians ON COMMIT DROP AS
SELECT dv.device_code AS device, s.field, hm.hour_start AS bucket,
       hm.reading_count AS n, hm.median_value AS median
FROM bi.hourly_medians AS hm
JOIN iot.sensors AS s ON s.id = hm.sensor_id
JOIN iot.devices AS dv ON dv.id = s.device_id
WHERE hm.hour_start >= :start AND hm.hour_start < :end
"""
_DAILY_MEDIANS = """
CREATE TEMP TABLE stage_medians ON COMMIT DROP AS
SELECT device, field, day AS bucket, reading_count AS n, median
FROM stage_daily WHERE median IS NOT NULL
"""

# How a rollup chunk gets its medians: fill stage_medians; False when none were computed.
MedianStager = Callable[[sa.Connection, Window, dict, int], bool]


def _insert_merged(level: Level, target: str, key: str, staged: str) -> str:
    if level.median is Median.NONE:
        return (
            f"INSERT INTO {target} (sensor_id, {key}, sample_count, mean_value, min_value, "
            "max_value, m2, first_reading_at, last_reading_at) "
            f"SELECT sensor_id, bucket, n, mean, mn, mx, m2, first_at, last_at FROM {staged}"
        )
    columns = (
        f"sensor_id, {key}, avg_value, min_value, max_value, sample_count, stddev_value, "
        "median_value, m2, first_reading_at, last_reading_at"
    )
    select = (
        "SELECT r.sensor_id, r.bucket, r.mean, r.mn, r.mx, r.n, r.stddev, r.median, r.m2, "
        "r.first_at, r.last_at"
    )
    if level.with_conditions:
        # Keep the condition columns in step with bi.daily_sensor_conditions, whichever of
        # rollup_daily / conditions_daily ran last.
        return (
            f"INSERT INTO {target} ({columns}, time_in_optimal_pct, time_in_critical_pct) "
            f"{select}, c.time_in_optimal_pct, c.time_in_critical_pct FROM {staged} AS r "
            "LEFT JOIN bi.daily_sensor_conditions AS c "
            "ON c.sensor_id = r.sensor_id AND c.metric_date = r.bucket"
        )
    return f"INSERT INTO {target} ({columns}) {select} FROM {staged} AS r"


def _merge_chunk(
    conn: sa.Connection,
    ctx: WriteContext,
    level: Level,
    chunk: Window,
    report: WriteReport,
    stage_medians: MedianStager | None,
) -> None:
    """Replace one chunk of a merged level (inside the caller's locked transaction)."""
    report.chunks += 1
    target = statements.quote_ident(level.table)
    key = statements.quote_ident(level.bucket_column)
    parts = levels.parts_sql(level)
    start_date, end_date = chunk.local_dates(ctx.zone)
    params = {
        "start": chunk.start,
        "end": chunk.end,
        "origin": chunk.start,
        "tz": ctx.settings.timezone,
        "start_date": start_date,
        "end_date": end_date,
    }
    zone = ctx.zone if level.key_is_date else None
    lo, hi = (start_date, end_date) if level.key_is_date else (chunk.start, chunk.end)
    source_rows, readings = conn.execute(
        sa.text(f"SELECT count(*), coalesce(sum(n), 0) FROM ({parts}) AS p"), params
    ).one()
    if source_rows == 0 and _has_rows(conn, level.table, level.bucket_column, chunk, zone):
        report.kept_chunks.append(str(chunk))
        return

    merged_sql = statements.render("merge_partials", parts=parts)
    if level.median is Median.NONE:
        conn.execute(sa.text(_STAGE_MERGE.format(merged=merged_sql)), params)
        staged = "stage_merge"
    else:
        computed = bool(source_rows) and stage_medians(conn, chunk, params, readings)
        if not computed:
            bucket_type = "date" if level.key_is_date else "timestamptz"
            conn.execute(sa.text(_EMPTY_MEDIANS.format(bucket_type=bucket_type)))
        conn.execute(
            sa.text(_STAGE_ROLLUP.format(merged=merged_sql, target=target, key=key)),
            {**params, "medians_computed": computed or not source_rows},
        )
        staged = "stage_rollup"
        for status, n in conn.execute(
            sa.text("SELECT median_status, count(*) FROM stage_rollup GROUP BY 1")
        ):
            report.median_status[status] += n

    # Imported history (migration 015) is replaced only where this computation from raw
    # has a row for the same (sensor, bucket).
    keep_imported = (
        f" AND (origin = 'computed' OR (sensor_id, {key}) IN "
        f"(SELECT sensor_id, bucket FROM {staged}))"
        if level.imported_history
        else ""
    )
    report.rows_deleted += conn.execute(
        sa.text(f"DELETE FROM {target} WHERE {key} >= :lo AND {key} < :hi{keep_imported}"),
        {"lo": lo, "hi": hi},
    ).rowcount
    report.rows_written += conn.execute(
        sa.text(_insert_merged(level, target, key, staged)), params
    ).rowcount
    for sensor_id, first, last in conn.execute(
        sa.text(f"SELECT sensor_id, min(first_at), max(last_at) FROM {staged} GROUP BY 1")
    ):
        report.sensors.add(sensor_id)
        report.saw_readings(first, last)
    report.preview = _preview(conn, level, chunk, zone)
    if level.watermark:
        now = conn.execute(sa.text("SELECT now()")).scalar_one()
        realtime.advance(conn, level.table, chunk.end, _open_since(level, now, chunk, ctx.zone))


def _open_since(level: Level, now: datetime, chunk: Window, zone: ZoneInfo) -> datetime:
    """Start of ``level``'s bucket still open at ``now`` (it may lack readings yet)."""
    if level.step is not None:
        return _floor(now, level.step, origin=chunk.start)
    # A local day (the daily level; a week would be its Monday, no level needs it yet).
    return datetime.combine(now.astimezone(zone).date(), time(0), zone)


def _floor(t: datetime, step: timedelta, origin: datetime | None = None) -> datetime:
    """Start of the ``step``-long bin containing ``t`` (bins aligned on ``origin``)."""
    origin = origin or datetime(2000, 1, 1, tzinfo=t.tzinfo)
    return t - (t - origin) % step


def _hourly_medians(conn: sa.Connection, chunk: Window, params: dict, readings: int) -> bool:
    conn.execute(sa.text(_HOURLY_MEDIANS), params)
    return True


def _daily_medians(conn: sa.Connection, chunk: Window, params: dict, readings: int) -> bool:
    conn.execute(sa.text(_DAILY_MEDIANS))  # from stage_daily, staged by write_daily
    return True


def _raw_medians(ctx: WriteContext, level: Level, report: WriteReport) -> MedianStager:
    def stage(conn: sa.Connection, chunk: Window, params: dict, readings: int) -> bool:
        if level.median_setting and not getattr(ctx.settings, level.median_setting):
            report.notes.append(f"median off for {chunk}: {level.median_setting} is false")
            return False
        # Exact medians hold the chunk's raw values in memory (~16 bytes each); the
        # partials say how many there are before we start. Above the limit: skip.
        if readings > ctx.settings.median_max_readings:
            report.notes.append(
                f"median skipped for {chunk}: {readings} readings exceed "
                "AGG_PIPELINE_MEDIAN_MAX_READINGS"
            )
            return False
        path = ctx.source.stage_medians(
            conn, chunk, _SOURCE_GRAIN[level.bucket], ctx.stage_context(conn)
        )
        report.read_from[path or "source"] += 1
        return True

    return stage


# The grain word a readings source stages raw medians for (sources.stage_medians).
_SOURCE_GRAIN = {
    hierarchy.Bucket.LOCAL_DAY: "day",
    hierarchy.Bucket.WEEK: "week",
    hierarchy.Bucket.MONTH: "month",
}


def _median_stager(ctx: WriteContext, level: Level, report: WriteReport) -> MedianStager | None:
    if level.median is Median.HOURLY_MEDIANS:
        return _hourly_medians
    if level.median is Median.DAILY_PASS:
        return _daily_medians
    if level.median is Median.RAW:
        return _raw_medians(ctx, level, report)
    return None


def write_merged_level(ctx: WriteContext, level: Level, window: Window) -> WriteReport:
    """Replace ``level.table`` inside ``window`` by merging the level below (5m, hourly,
    weekly; the daily level is written by ``write_daily``)."""
    report = WriteReport(level.table, window)
    # Whole buckets per chunk (weekly: whole weeks, as weekly windows start Monday).
    unit = level.chunk_unit_days
    chunk_days = unit * max(1, ctx.settings.chunk_days // unit)
    medians = _median_stager(ctx, level, report)
    # A calendar month is not a whole number of days: one month per chunk.
    chunks = (
        window.months(ctx.zone)
        if level.bucket is hierarchy.Bucket.MONTH
        else window.chunks(ctx.zone, chunk_days)
    )
    for chunk in chunks:
        with ctx.warehouse.locked_transaction(level.table, chunk.local_days(ctx.zone)) as conn:
            computed_from = versions.watermark(conn)  # before any parent row (rule 2)
            # A median read from raw: a bucket with a released day keeps its row.
            if level.median.reads_raw and _raw_released(conn, ctx, chunk):
                _keep_released(report, chunk)
                versions.record(conn, {level.asset: _starts(level, chunk, ctx.zone)}, computed_from)
                continue
            if level.closed_windows_only and level.step is not None:
                # As for minutes: an open window waits for the next run.
                closed = _closed_part(conn, chunk, level.step)
                if closed is None:
                    report.notes.append(
                        f"{chunk}: its first {levels.interval_literal(level.step)} are still open"
                    )
                    continue
                chunk = closed
            _merge_chunk(conn, ctx, level, chunk, report, medians)
            versions.record(conn, {level.asset: _starts(level, chunk, ctx.zone)}, computed_from)
    return report.finish()


_PARTITIONS_IN: dict[Grain, Callable[[Window, ZoneInfo], list[datetime]]] = {
    Grain.HOURLY: lambda chunk, zone: versions.hours_in(chunk),
    Grain.DAILY: versions.days_in,
    Grain.WEEKLY: versions.weeks_in,
    Grain.MONTHLY: versions.months_in,
}


def _starts(level: Level, chunk: Window, zone: ZoneInfo) -> list[datetime]:
    """The partitions of ``level``'s asset that ``chunk`` rewrote."""
    return _PARTITIONS_IN[level.grain](chunk, zone)


# --------------------------------------------------------------------------------------
# The daily level: rollup_daily and conditions_daily from one pass over raw
# --------------------------------------------------------------------------------------

_RANGES_SQL = """
SELECT d.day, g.field, min(g.optimal_min) AS optimal_min, max(g.optimal_max) AS optimal_max
FROM unnest(CAST(:days AS date[])) AS d (day)
JOIN crop.batches AS b ON b.started_on <= d.day AND coalesce(b.ended_on, d.day) >= d.day
JOIN crop.growth_stage_definitions AS g
  ON g.crop_name = b.crop_name AND g.stage_name = b.stage_name
GROUP BY d.day, g.field
"""

_INSERT_CONDITIONS = f"""
INSERT INTO bi.daily_sensor_conditions (
    sensor_id, metric_date, optimal_min, optimal_max, critical_below, critical_above,
    reading_count, optimal_pct_by_count, critical_pct_by_count, covered_seconds,
    time_in_optimal_pct, time_in_critical_pct, expected_readings, coverage_pct)
SELECT s.id, st.day, st.opt_min, st.opt_max, st.crit_below, st.crit_above,
       st.reading_count,
       100.0 * st.optimal_count / st.reading_count,
       100.0 * st.critical_count / st.reading_count,
       st.covered_seconds,
       CASE WHEN st.covered_seconds > 0 THEN 100.0 * st.optimal_seconds / st.covered_seconds END,
       CASE WHEN st.covered_seconds > 0 THEN 100.0 * st.critical_seconds / st.covered_seconds END,
       e.expected,
       100.0 * st.reading_count / e.expected
FROM stage_daily AS st {_JOIN_SENSORS}
JOIN (
    SELECT day, extract(epoch FROM ((day + 1)::timestamp AT TIME ZONE :tz)
                                 - (day::timestamp AT TIME ZONE :tz)) / :interval AS expected
    FROM unnest(CAST(:days AS date[])) AS x (day)
) AS e ON e.day = st.day
WHERE st.opt_min IS NOT NULL
"""

_SYNC_DAILY = """
UPDATE bi.daily_sensor_agg AS a
SET time_in_optimal_pct = c.time_in_optimal_pct,
    time_in_critical_pct = c.time_in_critical_pct
FROM (
    SELECT a2.sensor_id, a2.metric_date, c2.time_in_optimal_pct, c2.time_in_critical_pct
    FROM bi.daily_sensor_agg AS a2
    LEFT JOIN bi.daily_sensor_conditions AS c2
      ON c2.sensor_id = a2.sensor_id AND c2.metric_date = a2.metric_date
    WHERE a2.metric_date >= :lo AND a2.metric_date < :hi
) AS c
WHERE a.sensor_id = c.sensor_id AND a.metric_date = c.metric_date
  AND (a.time_in_optimal_pct, a.time_in_critical_pct)
      IS DISTINCT FROM (c.time_in_optimal_pct, c.time_in_critical_pct)
"""


def condition_bands(
    conn: sa.Connection, catalogue: Catalogue, days: list[date], margin_pct: float
) -> dict[tuple[date, str], cond.ConditionBand]:
    """The band of every (day, field) that has an optimal range that day."""
    from_batches: dict[tuple[date, str], tuple[float, float]] = {
        (r.day, r.field): (r.optimal_min, r.optimal_max)
        for r in conn.execute(sa.text(_RANGES_SQL), {"days": days})
        if r.field in catalogue.fields
    }
    bands = {}
    for day in days:
        for name, spec in catalogue.fields.items():
            rng = from_batches.get((day, name)) or (
                (spec.optimal.min, spec.optimal.max) if spec.optimal else None
            )
            if rng:
                bands[(day, name)] = cond.band(rng[0], rng[1], margin_pct)
    return bands


def _write_conditions_chunk(
    conn: sa.Connection,
    ctx: WriteContext,
    chunk: Window,
    days: list[date],
    bands: dict,
    report: WriteReport,
) -> None:
    report.chunks += 1
    lo, hi = days[0], days[-1] + timedelta(days=1)
    staged, first_at, last_at = conn.execute(
        sa.text(
            "SELECT count(*), min(first_reading_at), max(last_reading_at) FROM stage_daily "
            "WHERE opt_min IS NOT NULL"
        )
    ).one()
    report.saw_readings(first_at, last_at)
    if staged == 0 and _has_rows(conn, report.table, "metric_date", chunk, ctx.zone):
        report.kept_chunks.append(str(chunk))
        return
    report.rows_deleted += conn.execute(
        sa.text(
            "DELETE FROM bi.daily_sensor_conditions WHERE metric_date >= :lo AND metric_date < :hi"
        ),
        {"lo": lo, "hi": hi},
    ).rowcount
    report.rows_written += conn.execute(
        sa.text(_INSERT_CONDITIONS),
        {
            "days": days,
            "tz": ctx.settings.timezone,
            "interval": ctx.catalogue.sample_interval_seconds,
        },
    ).rowcount
    conn.execute(sa.text(_SYNC_DAILY), {"lo": lo, "hi": hi})
    report.sensors.update(
        r[0]
        for r in conn.execute(
            sa.text(
                "SELECT sensor_id FROM bi.daily_sensor_conditions "
                "WHERE metric_date >= :lo AND metric_date < :hi"
            ),
            {"lo": lo, "hi": hi},
        )
    )
    report.preview = [
        dict(r)
        for r in conn.execute(
            sa.text(
                "SELECT dv.device_code AS device, s.field, c.metric_date, "
                "round(c.time_in_optimal_pct::numeric, 2) AS optimal_pct, "
                "round(c.time_in_critical_pct::numeric, 2) AS critical_pct, "
                "round(c.coverage_pct::numeric, 1) AS coverage_pct "
                "FROM bi.daily_sensor_conditions AS c "
                "JOIN iot.sensors AS s ON s.id = c.sensor_id "
                "JOIN iot.devices AS dv ON dv.id = s.device_id "
                "WHERE c.metric_date >= :lo AND c.metric_date < :hi "
                f"ORDER BY c.metric_date DESC, dv.device_code, s.field LIMIT {PREVIEW_ROWS}"
            ),
            {"lo": lo, "hi": hi},
        ).mappings()
    ]
    if report.chunks == 1:
        report.info.extend(
            sorted(
                {
                    f"{f}: optimal {b.optimal_min:g}..{b.optimal_max:g}, critical below "
                    f"{b.critical_below:g} / above {b.critical_above:g}"
                    for (_, f), b in bands.items()
                }
            )
        )
    if not bands:
        report.notes.append(f"no optimal ranges in force for {lo}..{hi}: nothing to do")


def write_daily(
    ctx: WriteContext, window: Window, rollup: bool = True, conditions: bool = True
) -> dict[str, WriteReport]:
    """Replace the daily rollups and/or condition shares inside ``window``, reading each
    day's raw readings once for both (exact medians and held durations)."""
    reports: dict[str, WriteReport] = {}
    if rollup:
        reports["rollup_daily"] = WriteReport(LEVEL_DAILY.table, window)
    if conditions:
        reports["conditions_daily"] = WriteReport("bi.daily_sensor_conditions", window)
    tables = [r.table for r in reports.values()]
    for chunk in window.chunks(ctx.zone, ctx.settings.chunk_days):
        lo, hi = chunk.local_dates(ctx.zone)
        days = [lo + timedelta(days=i) for i in range((hi - lo).days)]
        with ctx.warehouse.locked_transaction(tables, days) as conn:
            computed_from = versions.watermark(conn)  # before any parent row (rule 2)
            if _raw_released(conn, ctx, chunk):
                for r in reports.values():
                    _keep_released(r, chunk)
                versions.record(
                    conn, {k: versions.days_in(chunk, ctx.zone) for k in reports}, computed_from
                )
                continue
            bands = (
                condition_bands(conn, ctx.catalogue, days, ctx.settings.critical_margin_pct)
                if conditions
                else {}
            )
            # One pass over the day's raw readings serves both halves.
            path = ctx.source.stage_daily(
                conn, chunk, bands, ctx.stage_context(conn), rollup, conditions
            )
            for r in reports.values():
                r.read_from[path or "source"] += 1
            if rollup:
                _merge_chunk(conn, ctx, LEVEL_DAILY, chunk, reports["rollup_daily"], _daily_medians)
            if conditions:
                pairs = conn.execute(
                    sa.text("SELECT DISTINCT device, field FROM stage_daily")
                ).all()
                reports["conditions_daily"].new_sensors += ctx.warehouse.register_sensors(
                    ctx.catalogue, [(p[0], p[1]) for p in pairs]
                )
                _write_conditions_chunk(conn, ctx, chunk, days, bands, reports["conditions_daily"])
            versions.record(
                conn, {k: versions.days_in(chunk, ctx.zone) for k in reports}, computed_from
            )
    return {k: r.finish() for k, r in reports.items()}


def write_conditions_daily(ctx: WriteContext, window: Window) -> WriteReport:
    return write_daily(ctx, window, rollup=False, conditions=True)["conditions_daily"]


def write_rollup_daily(ctx: WriteContext, window: Window) -> WriteReport:
    return write_daily(ctx, window, rollup=True, conditions=False)["rollup_daily"]
