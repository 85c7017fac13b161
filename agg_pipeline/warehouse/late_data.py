"""Late readings, found without scanning the raw table.

A statement-level trigger (sql/008_late_data.sql) appends, for every statement that
writes raw readings, the rows it touched per 15-minute bucket of reading time. ``drain``
moves that log into ``raw.readings_late_hours``: per hour, how many rows arrived after the
hour had *settled* (ended ``settle`` ago) - the rows the scheduled runs could not have
seen. Each change gets a new ``change_seq``, so a reader with a cursor sees every change
exactly once, and a reader that fails before saving its cursor simply sees it again.
Drains are serialized by an advisory lock, so sequence order is commit order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from agg_pipeline.core.windows import Window
from agg_pipeline.warehouse import versions

_DRAIN_LOCK = 7_301_002

_DRAIN = """
WITH drained AS (
    DELETE FROM raw.readings_change_log RETURNING bucket_start, rows_changed, logged_at
),
hours AS (
    SELECT date_bin('1 hour', bucket_start, :origin) AS hour_start, rows_changed, logged_at
    FROM drained
),
bumped AS (
    -- Every hour with any change gets a new data version (versions.py), late or not.
    INSERT INTO ops.partition_versions AS v (asset, partition_start, version)
    SELECT 'raw_readings', hour_start, nextval('ops.partition_version_seq')
    FROM (SELECT DISTINCT hour_start FROM hours ORDER BY hour_start) AS changed
    ON CONFLICT (asset, partition_start) DO UPDATE
    SET version = EXCLUDED.version, written_at = clock_timestamp()
),
late AS (
    SELECT hour_start, sum(rows_changed) AS late_rows, max(logged_at) AS last_late_at
    FROM hours
    WHERE logged_at >= hour_start + interval '1 hour' + make_interval(secs => :settle_seconds)
    GROUP BY hour_start
)
INSERT INTO raw.readings_late_hours AS h (hour_start, late_rows, last_late_at, change_seq)
SELECT hour_start, late_rows, last_late_at, nextval('raw.readings_late_seq')
FROM late
ORDER BY hour_start
ON CONFLICT (hour_start) DO UPDATE
SET late_rows = h.late_rows + EXCLUDED.late_rows,
    last_late_at = greatest(h.last_late_at, EXCLUDED.last_late_at),
    change_seq = EXCLUDED.change_seq
"""


# raw.events and raw.diagnostics (sql/018), and the event rollups' raw tables (sql/021,
# under their source asset's name): every changed hour gets a new version of its
# source asset, as raw readings' hours do (no late counts: nothing reads them).
_DRAIN_SOURCES = """
WITH drained AS (
    DELETE FROM raw.source_change_log RETURNING source, bucket_start
)
INSERT INTO ops.partition_versions AS v (asset, partition_start, version)
SELECT source, hour_start, nextval('ops.partition_version_seq')
FROM (SELECT DISTINCT source, date_bin('1 hour', bucket_start, :origin) AS hour_start
      FROM drained ORDER BY 1, 2) AS changed
ON CONFLICT (asset, partition_start) DO UPDATE
SET version = EXCLUDED.version, written_at = clock_timestamp()
"""
SOURCE_TABLES = {
    "raw_events": "raw.events",
    "raw_diagnostics": "raw.diagnostics",
    # The shipped analytics catalogue's (a catalogue's own tables: defs/events/levels.py).
    "raw_executions": "raw.executions",
    "raw_user_activity": "raw.user_activity",
    "raw_credit_usage": "raw.credit_usage",
}


def drain_sources(engine: sa.Engine, origin: datetime) -> int:
    """Fold the other sources' change log into source-hour versions; return how
    many (source, hour) versions changed."""
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _DRAIN_LOCK})
        versions.lock(conn)
        return conn.execute(sa.text(_DRAIN_SOURCES), {"origin": origin}).rowcount


@dataclass(frozen=True)
class LateHour:
    hour_start: datetime
    late_rows: int  # cumulative rows that arrived (or were changed) after the hour settled
    last_late_at: datetime
    change_seq: int

    @property
    def data_version(self) -> str:
        return f"late-{self.late_rows}-{self.change_seq}"


def drain(engine: sa.Engine, origin: datetime, settle: timedelta) -> int:
    """Fold the change log into per-hour late counts; return how many hours changed."""
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _DRAIN_LOCK})
        versions.lock(conn)  # raw versions in commit order (held to this commit only)
        return conn.execute(
            sa.text(_DRAIN), {"origin": origin, "settle_seconds": settle.total_seconds()}
        ).rowcount


def changes_since(engine: sa.Engine, change_seq: int, since: datetime) -> list[LateHour]:
    """Hours (starting at or after ``since``) whose late count changed after ``change_seq``."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT hour_start, late_rows, last_late_at, change_seq "
                "FROM raw.readings_late_hours WHERE change_seq > :seq AND hour_start >= :since "
                "ORDER BY change_seq"
            ),
            {"seq": change_seq, "since": since},
        ).all()
    return [LateHour(*r) for r in rows]


def late_rows_in(conn: sa.Connection, window: Window) -> tuple[int, datetime | None]:
    """Late rows recorded for the hours of ``window`` and when the last one arrived."""
    rows, last = conn.execute(
        sa.text(
            "SELECT coalesce(sum(late_rows), 0), max(last_late_at) FROM raw.readings_late_hours "
            "WHERE hour_start >= :s AND hour_start < :e"
        ),
        {"s": window.start, "e": window.end},
    ).one()
    return int(rows), last


# --------------------------------------------------------------------------------------
# InfluxDB source: fingerprints instead of a trigger's log
# --------------------------------------------------------------------------------------

_OBSERVER = "ops.influx_hour_fingerprints"  # ops.watermarks row: when observation began


def record_fingerprints(
    engine: sa.Engine,
    observed: dict[datetime, tuple[int, datetime | None]],
    since: datetime,
    now: datetime,
    settle: timedelta,
) -> int:
    """Compare the hours' fingerprints (points, last point time) over [since, now) with the
    last ones seen; record changes to settled hours as late rows. Returns hours changed.

    An hour first seen after it settled counts as late only if observation was already
    running when the hour ended (otherwise it is history, seen for the first time).
    """
    late: list[dict] = []
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _DRAIN_LOCK})
        began = conn.execute(
            sa.text(
                "INSERT INTO ops.watermarks AS w (table_name, complete_until) VALUES (:t, :now) "
                "ON CONFLICT (table_name) DO UPDATE SET complete_until = w.complete_until "
                "RETURNING complete_until"
            ),
            {"t": _OBSERVER, "now": now},
        ).scalar_one()
        previous = {
            r[0]: (int(r[1]), r[2])
            for r in conn.execute(
                sa.text(
                    "SELECT hour_start, point_count, last_point_at "
                    "FROM ops.influx_hour_fingerprints WHERE hour_start >= :since"
                ),
                {"since": since},
            )
        }
        changed: list[dict] = []
        for hour in sorted(set(observed) | set(previous)):
            new = observed.get(hour, (0, None))
            old = previous.get(hour)
            if old == new:
                continue
            changed.append({"h": hour, "n": new[0], "last": new[1], "now": now})
            settled = now >= hour + timedelta(hours=1) + settle
            if settled and (old is not None or began < hour + timedelta(hours=1)):
                old_count = old[0] if old else 0
                late.append({"hour": hour, "rows": max(abs(new[0] - old_count), 1), "now": now})
        # One executemany each (a first observation stores a whole lookback of hours).
        if changed:
            conn.execute(
                sa.text(
                    "INSERT INTO ops.influx_hour_fingerprints AS f "
                    "(hour_start, point_count, last_point_at, observed_at) "
                    "VALUES (:h, :n, :last, :now) ON CONFLICT (hour_start) DO UPDATE SET "
                    "point_count = EXCLUDED.point_count, last_point_at = EXCLUDED.last_point_at, "
                    "observed_at = EXCLUDED.observed_at"
                ),
                changed,
            )
        versions.bump_raw(conn, [c["h"] for c in changed])
        if late:  # in hour order: sequence order is hour order within one observation
            conn.execute(
                sa.text(
                    "INSERT INTO raw.readings_late_hours AS h "
                    "(hour_start, late_rows, last_late_at, change_seq) "
                    "VALUES (:hour, :rows, :now, nextval('raw.readings_late_seq')) "
                    "ON CONFLICT (hour_start) DO UPDATE SET late_rows = h.late_rows + "
                    "EXCLUDED.late_rows, last_late_at = greatest(h.last_late_at, "
                    "EXCLUDED.last_late_at), change_seq = EXCLUDED.change_seq"
                ),
                late,
            )
    return len(late)


def influx_fingerprints(frames: dict) -> dict[datetime, tuple[int, datetime | None]]:
    """Per hour start: points over all series and the latest point's time."""
    counts = frames.get("count")
    if counts is None or counts.empty:
        return {}
    per_hour = counts.groupby("_time")["_value"].sum()
    lasts = frames.get("last")
    last = lasts.groupby("_start")["_time"].max() if lasts is not None and not lasts.empty else {}
    return {
        h.to_pydatetime(): (int(n), (last[h].to_pydatetime() if h in last else None))
        for h, n in per_hour.items()
    }
