"""The SQL of event rollups, and the window-replace write of one rollup level.

One statement per chunk computes a level straight from the raw events: each event is
judged once (``duplicate``, ``future``, then the source's reject rules, first match
wins), the good ones are grouped by the rollup's dimensions and the level's bucket, and the
figures are inserted; the same statement returns the count of events by reason. A chunk is
one transaction holding advisory locks on (table, local day): delete the chunk's buckets,
insert, commit. Re-running replaces, never appends; two runs of one window serialize.

A chunk with a day whose raw events retention released (``ops.raw_retention_ledger``), or
whose raw table holds no events at all while the target has rows, keeps its rows, and the
report says so: they were computed while the events were whole.

Identifiers come from the validated events catalogue and are quoted here; values (window
bounds, zone, filter literals, the future tolerance) are always bound.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from agg_pipeline.config.events import Grain, Measure, RollupLevel, compile_filter
from agg_pipeline.core.windows import Window, local_midnight
from agg_pipeline.warehouse import retention, versions
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline.warehouse.statements import quote_ident

REASON = "_reject_reason_"  # judged rows' reason column (NULL: a good event)
_DISTINCT_HOUR = "date_bin('1 hour', {t}, :origin)"


def bucket_sql(grain: Grain, time_column: str) -> str:
    """The bucket of an event time: an hour (from ``:origin``), or a local date."""
    t = quote_ident(time_column)
    if grain is Grain.HOURLY:
        return f"date_bin('1 hour', {t}, :origin)"
    trunc = {Grain.DAILY: "day", Grain.WEEKLY: "week", Grain.MONTHLY: "month"}[grain]
    return f"date_trunc('{trunc}', {t} AT TIME ZONE :tz)::date"


GOOD = f"{REASON} IS NULL"


def _measure_sql(name: str, m: Measure, level: RollupLevel, params: dict) -> str:
    """The aggregate of one measure over the bucket's good events (and its filter)."""
    cond = GOOD
    if m.filter is not None:
        f = compile_filter(m.filter, set(level.source.columns), f"{name}_f")
        params.update(f.params)
        cond = f"{GOOD} AND {f.sql}"
    where = f" FILTER (WHERE {cond})"
    col = quote_ident(m.column) if m.column else ""
    if m.agg == "count":
        return f"count(*){where}"
    if m.agg == "sum":
        # A bucket without values sums to 0 (additive, like the counts beside it).
        return f"COALESCE(sum({col}){where}, 0)::float8"
    if m.agg in ("avg", "min", "max"):
        return f"({m.agg}({col}){where})::float8"
    if m.agg == "stddev":
        # PostgreSQL's own float8 variance (Youngs-Cramer): stable, no sums of squares.
        return f"stddev_samp({col}){where}"
    if m.agg == "percentile":
        params[f"{name}_p"] = m.p
        return f"percentile_cont(:{name}_p) WITHIN GROUP (ORDER BY {col}){where}"
    if m.agg == "count_distinct":
        return f"count(DISTINCT {col}){where}"
    if m.agg == "distinct_hours":
        hour = _DISTINCT_HOUR.format(t=quote_ident(level.source.time_column))
        return f"count(DISTINCT {hour}){where}"
    raise ValueError(f"{name}: {m.agg} is computed from other measures")


def reasons(level: RollupLevel) -> list[str]:
    """Every reason an event of the level's source can be rejected for, in judging order."""
    builtin = ["duplicate", "future"] if level.source.id_column else ["future"]
    return [*builtin, *level.source.reject]


def judged_sql(level: RollupLevel, params: dict) -> str:
    """The window's events with the reason each bad one is rejected for (NULL: good)."""
    src = level.source
    table, t = quote_ident(src.table), quote_ident(src.time_column)
    cases = []
    if src.id_column:
        i = quote_ident(src.id_column)
        # The earliest row of an id counts: a copy is a duplicate when an earlier time of
        # its id exists (an index-only probe of (id, time)), or, among copies stamped the
        # same instant (always in the same window), when it is not the first stored.
        cases.append(
            f"WHEN e.{i} IS NOT NULL AND (EXISTS (SELECT 1 FROM {table} d WHERE d.{i} = e.{i} "
            f"AND d.{t} < e.{t}) OR row_number() OVER (PARTITION BY e.{i}, e.{t} "
            "ORDER BY e.ctid) > 1) THEN 'duplicate'"
        )
    cases.append(f"WHEN e.{t} > now() + make_interval(secs => :future_tolerance) THEN 'future'")
    for n, (reason, text) in enumerate(src.reject.items()):
        f = compile_filter(text, set(src.columns), f"r{n}")
        params.update(f.params)
        params[f"reason_{n}"] = reason
        cases.append(f"WHEN COALESCE({f.sql}, false) THEN CAST(:reason_{n} AS text)")
    cols = ", ".join(f"e.{quote_ident(c)}" for c in (src.time_column, *src.columns))
    return (
        f"SELECT {cols}, CASE {' '.join(cases)} END AS {REASON} "
        f"FROM {table} e WHERE e.{t} >= :lo AND e.{t} < :hi"
    )


def insert_sql(level: RollupLevel) -> tuple[str, dict]:
    """One statement, one pass over the window's events: judge each, aggregate per
    dimensions and bucket (the good events' figures and the bad ones' count by reason),
    insert the buckets with good events, and return one row: good events, the count of
    each of ``reasons(level)``, rows inserted."""
    params: dict[str, object] = {}
    dims = [quote_ident(d) for d in level.spec.dimensions]
    bucket = quote_ident(level.bucket_column)
    plain = {n: m for n, m in level.measures.items() if m.agg != "ratio_pct"}
    aggs = [f"{_measure_sql(n, m, level, params)} AS {quote_ident(n)}" for n, m in plain.items()]
    why = reasons(level)
    for n, reason in enumerate(why):
        params[f"why_{n}"] = reason
    counts = [f"count(*) FILTER (WHERE {REASON} = CAST(:why_{n} AS text)) AS _bad_{n}"
              for n in range(len(why))]  # fmt: skip
    out = []
    for n, m in level.measures.items():
        if m.agg == "ratio_pct":
            num, den = quote_ident(m.numerator), quote_ident(m.denominator)
            out.append(f"(CASE WHEN {den} <> 0 THEN 100.0 * {num} / {den} END)::float8")
        else:
            out.append(quote_ident(n))
    target = ", ".join([*dims, bucket, *map(quote_ident, level.measures)])
    group = ", ".join(str(i + 1) for i in range(len(dims) + 1))
    bucket_expr = bucket_sql(level.grain, level.source.time_column)
    sql = (
        f"WITH judged AS ({judged_sql(level, params)}), "
        f"agg AS MATERIALIZED (SELECT {', '.join(dims)}, {bucket_expr} AS {bucket}, "
        f"count(*) FILTER (WHERE {GOOD}) AS _good, {', '.join([*counts, *aggs])} "
        f"FROM judged GROUP BY {group}), "
        f"ins AS (INSERT INTO {quote_ident(level.table)} ({target}) "
        f"SELECT {', '.join([*dims, bucket, *out])} FROM agg WHERE _good > 0 RETURNING 1) "
        "SELECT COALESCE(sum(_good), 0), "
        + "".join(f"COALESCE(sum(_bad_{n}), 0), " for n in range(len(why)))
        + "(SELECT count(*) FROM ins) FROM agg"
    )
    return sql, params


def _bucket_bounds(level: RollupLevel, chunk: Window, zone: ZoneInfo) -> tuple[object, object]:
    if level.grain is Grain.HOURLY:
        return chunk.start, chunk.end
    return chunk.start.astimezone(zone).date(), chunk.end.astimezone(zone).date()


def _next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def chunks(grain: Grain, window: Window, zone: ZoneInfo) -> Iterator[Window]:
    """The run's window in transactions: a local day of hours, a day, a week or a month."""
    if grain is not Grain.MONTHLY:
        yield from window.chunks(zone, 7 if grain is Grain.WEEKLY else 1)
        return
    cursor = window.start
    while cursor < window.end:
        month = cursor.astimezone(zone).date().replace(day=1)
        nxt = min(local_midnight(_next_month(month), zone).astimezone(UTC), window.end)
        yield Window(cursor, nxt)
        cursor = nxt


@dataclass
class EventWriteReport:
    table: str
    window: Window
    rows_written: int = 0
    rows_deleted: int = 0
    events_read: int = 0
    good_events: int = 0
    rejected: Counter = field(default_factory=Counter)
    chunks: int = 0
    kept_chunks: list[str] = field(default_factory=list)

    @property
    def notes(self) -> list[str]:
        if not self.kept_chunks:
            return []
        return [
            f"{len(self.kept_chunks)} chunk(s) without their raw events (retention): "
            f"existing rows kept: {', '.join(self.kept_chunks[:3])}"
            + (" ..." if len(self.kept_chunks) > 3 else "")
        ]


def write_level(
    warehouse: WarehouseResource,
    level: RollupLevel,
    window: Window,
    zone: ZoneInfo,
    future_tolerance_seconds: float,
) -> EventWriteReport:
    """Replace ``level``'s buckets inside ``window`` with figures from the raw events."""
    report = EventWriteReport(level.table, window)
    insert, params = insert_sql(level)
    table, bucket = quote_ident(level.table), quote_ident(level.bucket_column)
    src, t = quote_ident(level.source.table), quote_ident(level.source.time_column)
    for chunk in chunks(level.grain, window, zone):
        lo, hi = _bucket_bounds(level, chunk, zone)
        bounds = {"lo": chunk.start, "hi": chunk.end}
        with warehouse.locked_transaction(level.table, chunk.local_days(zone)) as conn:
            report.chunks += 1
            computed_from = versions.watermark(conn)  # before any raw row (versions.py)
            written = {level.asset: partition_starts(level.grain, chunk, zone)}
            if retention.released_days(conn, level.source.table, chunk.local_days(zone)):
                # Retention deleted raw events of this chunk: its rows are final (computed
                # while they were whole); recomputing would count only what is left.
                report.kept_chunks.append(f"{chunk} (raw events released)")
                versions.record(conn, written, computed_from)  # final: current, never healed
                continue
            has_events = conn.execute(
                sa.text(f"SELECT EXISTS (SELECT 1 FROM {src} WHERE {t} >= :lo AND {t} < :hi)"),
                bounds,
            ).scalar_one()
            if not has_events:
                held = conn.execute(
                    sa.text(f"SELECT count(*) FROM {table} WHERE {bucket} >= :a AND {bucket} < :b"),
                    {"a": lo, "b": hi},
                ).scalar_one()
                if held:
                    report.kept_chunks.append(str(chunk))
                    versions.record(conn, written, computed_from)  # kept as computed
                    continue
            report.rows_deleted += conn.execute(
                sa.text(f"DELETE FROM {table} WHERE {bucket} >= :a AND {bucket} < :b"),
                {"a": lo, "b": hi},
            ).rowcount
            row = conn.execute(
                sa.text(insert),
                {
                    **params,
                    **bounds,
                    "origin": chunk.start,
                    "tz": zone.key,
                    "future_tolerance": future_tolerance_seconds,
                },
            ).one()
            good, *bad, inserted = (int(x) for x in row)
            report.rows_written += inserted
            report.good_events += good
            report.events_read += good + sum(bad)
            for reason, n in zip(reasons(level), bad, strict=True):
                if n:
                    report.rejected[reason] += n
            # The last statement: this chunk's partitions are current as of computed_from
            # (self-healing recomputes them when a raw hour under them changes later).
            versions.record(conn, written, computed_from)
    return report


def partition_starts(grain: Grain, chunk: Window, zone: ZoneInfo) -> list:
    """The starts of ``grain``'s partitions inside ``chunk`` (their versions' keys)."""
    if grain is Grain.HOURLY:
        return versions.hours_in(chunk)
    days = versions.days_in(chunk, zone)
    if grain is Grain.DAILY:
        return days
    if grain is Grain.WEEKLY:
        return [d for d in days if d.weekday() == 0]
    return [d for d in days if d.day == 1]


# ---------------------------------------------------------------------------------------
# The levels add up: counts of a level are the sums of the level below it
# ---------------------------------------------------------------------------------------


def finer_level(level: RollupLevel, all_levels: list[RollupLevel]) -> RollupLevel | None:
    """The next finer grain of the same rollup (hourly under daily; daily under weekly and
    monthly, or hourly when the rollup has no daily grain)."""
    order = list(Grain)
    finer = [
        lv
        for lv in all_levels
        if lv.rollup == level.rollup and order.index(lv.grain) < order.index(level.grain)
    ]
    finer = [lv for lv in finer if lv.grain is not Grain.WEEKLY]  # weeks do not nest in months
    return max(finer, key=lambda lv: order.index(lv.grain)) if finer else None


def _into(finer: RollupLevel, grain: Grain) -> str:
    """The coarser bucket of a finer row's bucket."""
    b = quote_ident(finer.bucket_column)
    local = f"({b} AT TIME ZONE :tz)" if finer.grain is Grain.HOURLY else b
    if grain is Grain.DAILY:
        return f"{local}::date"
    trunc = {Grain.WEEKLY: "week", Grain.MONTHLY: "month"}[grain]
    return f"date_trunc('{trunc}', {local})::date"


@dataclass(frozen=True)
class AddsUp:
    keys: int  # (dimensions, bucket) compared
    mismatched: int  # keys whose counts differ, or missing on one side
    examples: list[str]


def counts_add_up(
    engine: sa.Engine, level: RollupLevel, finer: RollupLevel, window: Window, zone: ZoneInfo
) -> AddsUp:
    """Compare ``level``'s count measures in ``window`` with the sums of ``finer``'s."""
    counts = [n for n, m in level.measures.items() if m.agg == "count" and n in finer.measures]
    dims = [quote_ident(d) for d in level.spec.dimensions]
    cols = [quote_ident(c) for c in counts]
    fb, b = quote_ident(finer.bucket_column), quote_ident(level.bucket_column)
    sums = ", ".join(f"sum({c}) AS {c}" for c in cols)
    plain = ", ".join(cols)
    n = len(dims) + 1
    differ = " OR ".join(f"lo.{c} IS DISTINCT FROM hi.{c}" for c in cols) or "false"
    dim_list = ", ".join(dims)
    sql = (
        f"WITH lo AS (SELECT {dim_list}, {_into(finer, level.grain)} AS b, {sums} "
        f"FROM {quote_ident(finer.table)} WHERE {fb} >= :fa AND {fb} < :fb "
        f"GROUP BY {', '.join(str(i + 1) for i in range(n))}), "
        f"hi AS (SELECT {dim_list}, {b} AS b, {plain} FROM {quote_ident(level.table)} "
        f"WHERE {b} >= :ua AND {b} < :ub) "
        f"SELECT concat_ws('/', {', '.join(dims)}, b::text), "
        f"(lo.b IS NULL OR hi.b IS NULL OR {differ}) AS bad "
        f"FROM lo FULL JOIN hi USING ({dim_list}, b)"
    )
    ua, ub = window.start.astimezone(zone).date(), window.end.astimezone(zone).date()
    fa, fb_ = _bucket_bounds(finer, window, zone)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(sql), {"tz": zone.key, "fa": fa, "fb": fb_, "ua": ua, "ub": ub}
        ).all()
    bad = [key for key, is_bad in rows if is_bad]
    return AddsUp(len(rows), len(bad), sorted(bad)[:5])
