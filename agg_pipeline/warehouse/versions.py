"""Data versions per (asset, partition): the facts self-healing decides on.

Table ``ops.partition_versions`` (sql/016_partition_versions.sql). Two rules make a
comparison of versions exact, with no race between a parent's write and a child's:

1. **Version order is commit order.** Every version comes from one sequence, taken under
   one transaction-level advisory lock as the *last* statement before commit (held only
   for that instant). So once a version ``v`` is visible, every version committed later is
   greater than ``v``.
2. **A writer reads the watermark first.** Before it reads any parent row, a write reads
   the highest committed version (``watermark``) in its own transaction and records it as
   ``computed_from`` of the partitions it writes. Everything a parent committed up to the
   watermark is visible to the reads that follow.

Hence a child partition is stale exactly when one of its parents' current versions is
greater than its ``computed_from``: that parent committed after the child began reading
(the child may have seen the change, or not: it is recomputed either way, once). A write
that commits while the child is running is never lost, whatever the order of the runs.

Raw hours have no writer here: the late-data drain (``late_data.drain``) and the InfluxDB
fingerprints give every hour it saw change a new version, under the same lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from agg_pipeline.core.windows import Window

VERSION_LOCK = 7_301_016  # advisory lock: version order = commit order
RAW = "raw_readings"

_RECORD = """
INSERT INTO ops.partition_versions AS v (asset, partition_start, version, computed_from)
SELECT :asset, s, nextval('ops.partition_version_seq'), :computed_from
FROM unnest(CAST(:starts AS timestamptz[])) AS s
ORDER BY s
ON CONFLICT (asset, partition_start) DO UPDATE
SET version = EXCLUDED.version, computed_from = EXCLUDED.computed_from,
    written_at = clock_timestamp()
"""


def watermark(conn: sa.Connection) -> int:
    """The highest committed version: read it before any parent row (rule 2)."""
    return int(
        conn.execute(
            sa.text("SELECT coalesce(max(version), 0) FROM ops.partition_versions")
        ).scalar_one()
    )


def lock(conn: sa.Connection) -> None:
    """Rule 1: call right before taking versions, in a transaction that then commits."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": VERSION_LOCK})


def record(
    conn: sa.Connection, written: dict[str, Sequence[datetime]], computed_from: int | None
) -> None:
    """New versions for the partitions written (asset -> partition starts): the last
    statement of the writing transaction."""
    lock(conn)
    for asset in sorted(written):
        starts = sorted(set(written[asset]))
        if starts:
            conn.execute(
                sa.text(_RECORD),
                {"asset": asset, "starts": starts, "computed_from": computed_from},
            )


def bump_raw(conn: sa.Connection, hour_starts: Iterable[datetime]) -> None:
    """Raw hours that changed: a new version each (no ``computed_from``: a source)."""
    starts = sorted(set(hour_starts))
    if starts:
        record(conn, {RAW: starts}, None)


def note_blocking_checks(
    conn: sa.Connection, asset: str, window: Window, failed: str | None
) -> None:
    """The blocking checks' verdict on the partitions of ``asset`` in ``window`` just
    written: the name of one that failed (the healer holds their children, healing.py), or
    None when all passed. The whole window: a check is evaluated over the run's window."""
    conn.execute(
        sa.text(
            "UPDATE ops.partition_versions SET failed_check = :c WHERE asset = :a "
            "AND partition_start >= :s AND partition_start < :e "
            "AND failed_check IS DISTINCT FROM :c"
        ),
        {"a": asset, "s": window.start, "e": window.end, "c": failed},
    )


# Partition starts of a written window, per grain (the partitions' own boundaries).


def hours_in(window: Window) -> list[datetime]:
    out, t = [], window.start
    while t < window.end:
        out.append(t)
        t += timedelta(hours=1)
    return out


def days_in(window: Window, zone: ZoneInfo) -> list[datetime]:
    first, last = window.start.astimezone(zone).date(), window.end.astimezone(zone).date()
    return [_local_midnight(first + timedelta(days=i), zone) for i in range((last - first).days)]


def weeks_in(window: Window, zone: ZoneInfo) -> list[datetime]:
    return [d for d in days_in(window, zone) if d.weekday() == 0]


def months_in(window: Window, zone: ZoneInfo) -> list[datetime]:
    return [d for d in days_in(window, zone) if d.day == 1]


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone)
