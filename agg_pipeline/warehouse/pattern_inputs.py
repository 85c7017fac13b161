"""What the pattern detectors read (``defs/patterns/assets.py``): a day's home-automation
events, each entity's last event before it, and the time-based baseline."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime

import sqlalchemy as sa

# (time, entity_id, domain, area_id, state, id) of raw.events
EventRow = tuple[datetime, str, str, str | None, str, int]


def day_events(
    conn: sa.Connection, start: datetime, end: datetime, chunk_rows: int
) -> Iterator[EventRow]:
    """The events in [start, end) by id, streamed: a server-side cursor for this statement
    only, ``chunk_rows`` per round trip (bounded memory)."""
    result = conn.execute(
        sa.text(
            "SELECT time, entity_id, domain, area_id, state, id FROM raw.events "
            "WHERE time >= :s AND time < :e ORDER BY id"
        ).execution_options(stream_results=True, yield_per=chunk_rows),
        {"s": start, "e": end},
    )
    for row in result:
        yield tuple(row)


def last_events_before(conn: sa.Connection, start: datetime, days: int) -> list[EventRow]:
    """Each entity's last event in the ``days`` before ``start`` (its state then)."""
    rows = conn.execute(
        sa.text(
            "SELECT DISTINCT ON (entity_id) time, entity_id, domain, area_id, state, id "
            "FROM raw.events WHERE time < :s AND time >= :s - make_interval(days => :carry) "
            "ORDER BY entity_id, time DESC, id DESC"
        ),
        {"s": start, "carry": days},
    )
    return [tuple(r) for r in rows]


def time_based_counts(conn: sa.Connection, days: list[date]) -> list[tuple[date, str, int]]:
    """(day, entity, occurrences) of bi.pattern_time_based_daily on ``days``."""
    rows = conn.execute(
        sa.text(
            "SELECT day, entity_id, occurrences FROM bi.pattern_time_based_daily "
            "WHERE day = ANY (CAST(:days AS date[]))"
        ),
        {"days": days},
    ).all()
    return [(d, e, int(n)) for d, e, n in rows]


def database_now(conn: sa.Connection) -> datetime:
    """The database's clock (the transaction's start)."""
    return conn.execute(sa.text("SELECT now()")).scalar_one()
