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

from agg_pipeline.config.events import Grain, Measure, RollupLevel, asset_name, compile_filter
from agg_pipeline.core.windows import Window, local_midnight
from agg_pipeline.warehouse import retention, versions
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline.warehouse.statements import quote_ident

REASON = "_reject_reason_"  # judged rows' reason column (NULL: a good event)
DUPLICATES = "_duplicates_"  # the window's duplicate rows (ctids)
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


def judged_sql(level: RollupLevel, params: dict, flagged_ids: bool = False) -> str:
    """The window's events with the reason each bad one is rejected for (NULL: good).

    ``flagged_ids``: the source's triggers note repeated ids (``raw.event_ids_seen``,
    sql/022), so the duplicate test runs only on events whose id is flagged; otherwise on
    every event. Same verdicts either way."""
    src = level.source
    table, t = quote_ident(src.table), quote_ident(src.time_column)
    cases = []
    if src.id_column:
        cases.append(f"WHEN e.ctid IN (SELECT c FROM {DUPLICATES}) THEN 'duplicate'")
    cases.append(f"WHEN e.{t} > now() + make_interval(secs => :future_tolerance) THEN 'future'")
    for n, (reason, text) in enumerate(src.reject.items()):
        f = compile_filter(text, set(src.columns), f"r{n}")
        params.update(f.params)
        params[f"reason_{n}"] = reason
        cases.append(f"WHEN COALESCE({f.sql}, false) THEN CAST(:reason_{n} AS text)")
    cols = ", ".join(f"e.{quote_ident(c)}" for c in (src.time_column, *src.columns))
    judged = (
        f"SELECT {cols}, CASE {' '.join(cases)} END AS {REASON} "
        # OFFSET 0: judged once per event (inlined, the CASE would be evaluated again in
        # every aggregate's FILTER).
        f"FROM {table} e WHERE e.{t} >= :lo AND e.{t} < :hi OFFSET 0"
    )
    if not src.id_column:
        return f"judged AS ({judged})"
    i = quote_ident(src.id_column)
    flagged = ""
    if flagged_ids:
        params["ids_source"] = src.table
        flagged = (
            f" AND e.{i}::text IN (SELECT s.id FROM raw.event_ids_seen s "
            "WHERE s.source = :ids_source AND s.repeated)"
        )
    # The earliest row of an id counts: a copy is a duplicate when an earlier time of its
    # id exists (an index-only probe of (id, time)), or, among copies stamped the same
    # instant (always in the same window), when it is not the first stored.
    dups = (
        f"SELECT c FROM (SELECT e.ctid AS c, EXISTS (SELECT 1 FROM {table} d "
        f"WHERE d.{i} = e.{i} AND d.{t} < e.{t}) AS earlier, "
        f"row_number() OVER (PARTITION BY e.{i}, e.{t} ORDER BY e.ctid) AS nth "
        f"FROM {table} e WHERE e.{t} >= :lo AND e.{t} < :hi AND e.{i} IS NOT NULL{flagged}) x "
        "WHERE earlier OR nth > 1"
    )
    return f"{DUPLICATES} AS MATERIALIZED ({dups}), judged AS ({judged})"


MERGEABLE = ("count", "sum", "avg", "min", "max", "stddev")
RAW_ONLY = ("percentile", "count_distinct", "distinct_hours")


def partials(name: str, m: Measure) -> list[str]:
    """The hidden columns a measure keeps so the level above merges it exactly."""
    if m.agg == "avg":
        return [f"{name}__n"]
    if m.agg == "stddev":
        return [f"{name}__n", f"{name}__mean", f"{name}__m2"]
    return []


def partial_columns(level: RollupLevel) -> list[str]:
    return [c for n, m in level.measures.items() for c in partials(n, m)]


def _raw_partials(name: str, m: Measure, level: RollupLevel, params: dict) -> list[str]:
    """The partials of a measure from the raw events, named."""
    if m.agg not in ("avg", "stddev"):
        return []
    cond = GOOD
    if m.filter is not None:
        f = compile_filter(m.filter, set(level.source.columns), f"{name}_f")
        params.update(f.params)
        cond = f"{GOOD} AND {f.sql}"
    col, where = quote_ident(m.column), f" FILTER (WHERE {cond})"
    n = f"count({col}){where}"
    out = [f"{n} AS {quote_ident(name + '__n')}"]
    if m.agg == "stddev":
        out += [
            f"(avg({col}){where})::float8 AS {quote_ident(name + '__mean')}",
            # M2 = n * population variance (PostgreSQL's Youngs-Cramer), 0 for one value.
            f"(var_pop({col}){where} * {n})::float8 AS {quote_ident(name + '__m2')}",
        ]
    return out


def _outputs(level: RollupLevel) -> list[str]:
    """The level's measure columns from a relation holding every plain measure by name."""
    out = []
    for n, m in level.measures.items():
        if m.agg == "ratio_pct":
            num, den = quote_ident(m.numerator), quote_ident(m.denominator)
            out.append(f"(CASE WHEN {den} <> 0 THEN 100.0 * {num} / {den} END)::float8")
        else:
            out.append(quote_ident(n))
    return out


def _raw_figures(level: RollupLevel, params: dict, names: dict[str, Measure],
                 with_partials: bool, flagged_ids: bool) -> str:  # fmt: skip
    """CTEs ending in ``agg``: per (dimensions, bucket) of the window's events, the good
    events (``_good``), the bad ones by reason (``_bad_<n>``), ``names``' measures and,
    ``with_partials``, their partials."""
    dims = [quote_ident(d) for d in level.spec.dimensions]
    bucket = quote_ident(level.bucket_column)
    aggs = [f"{_measure_sql(n, m, level, params)} AS {quote_ident(n)}" for n, m in names.items()]
    if with_partials:
        for n, m in names.items():
            aggs += _raw_partials(n, m, level, params)
    why = reasons(level)
    for n, reason in enumerate(why):
        params[f"why_{n}"] = reason
    counts = [f"count(*) FILTER (WHERE {REASON} = CAST(:why_{n} AS text)) AS _bad_{n}"
              for n in range(len(why))]  # fmt: skip
    group = ", ".join(str(i + 1) for i in range(len(dims) + 1))
    bucket_expr = bucket_sql(level.grain, level.source.time_column)
    return (
        f"{judged_sql(level, params, flagged_ids)}, "
        f"agg AS MATERIALIZED (SELECT {', '.join(dims)}, {bucket_expr} AS {bucket}, "
        f"count(*) FILTER (WHERE {GOOD}) AS _good, {', '.join([*counts, *aggs])} "
        f"FROM judged GROUP BY {group})"
    )


def _summary(level: RollupLevel, good: str, bad_from: str | None) -> str:
    """The statement's one row: good events, the count of each reason, rows inserted."""
    why = reasons(level)
    if bad_from is None:
        bad = "".join("0, " for _ in why)
        return f"SELECT {good}, {bad}(SELECT count(*) FROM ins)"
    bad = "".join(f"COALESCE(sum(_bad_{n}), 0), " for n in range(len(why)))
    return f"SELECT {good}, {bad}(SELECT count(*) FROM ins) FROM {bad_from}"


def insert_sql(level: RollupLevel, flagged_ids: bool = False,
               with_partials: bool = True) -> tuple[str, dict]:  # fmt: skip
    """One statement, one pass over the window's events: judge each, aggregate per
    dimensions and bucket (the good events' figures and the bad ones' count by reason),
    insert the buckets with good events, and return one row: good events, the count of
    each of ``reasons(level)``, rows inserted."""
    params: dict[str, object] = {}
    dims = [quote_ident(d) for d in level.spec.dimensions]
    bucket = quote_ident(level.bucket_column)
    plain = {n: m for n, m in level.measures.items() if m.agg != "ratio_pct"}
    hidden = partial_columns(level) if with_partials else []
    target = ", ".join([*dims, bucket, *map(quote_ident, [*level.measures, *hidden])])
    sql = (
        f"WITH {_raw_figures(level, params, plain, with_partials, flagged_ids)}, "
        f"ins AS (INSERT INTO {quote_ident(level.table)} ({target}) "
        f"SELECT {', '.join([*dims, bucket, *_outputs(level), *map(quote_ident, hidden)])} "
        "FROM agg WHERE _good > 0 RETURNING 1) " + _summary(level, "COALESCE(sum(_good), 0)", "agg")
    )
    return sql, params


def can_merge(level: RollupLevel, finer: RollupLevel | None) -> bool:
    """Whether ``level``'s mergeable measures can come from ``finer``'s rows: the finer
    level has every one of them (same rollup, so the same definition)."""
    if finer is None:
        return False
    mergeable = [n for n, m in level.measures.items() if m.agg in MERGEABLE]
    return bool(mergeable) and all(n in finer.measures for n in mergeable)


def merge_sql(level: RollupLevel, finer: RollupLevel, flagged_ids: bool = False,
              with_partials: bool = True) -> tuple[str, dict]:  # fmt: skip
    """Like ``insert_sql``, with the mergeable measures (count, sum, avg, min, max, stddev)
    merged from ``finer``'s rows inside the window (``:fa`` / ``:fb`` on its bucket) and
    only the others (exact percentiles, distinct counts) from the raw events. avg and
    stddev merge on (n, mean, M2) by Chan et al.'s parallel formula, k-way: M2 = sum(M2_i)
    + sum(n_i (mean_i - mean)^2), deviations from the merged mean, never a naive sum of
    squares. The raw events are not read at all when no measure needs them."""
    params: dict[str, object] = {}
    dims = [quote_ident(d) for d in level.spec.dimensions]
    bucket = quote_ident(level.bucket_column)
    merged = {n: m for n, m in level.measures.items() if m.agg in MERGEABLE}
    from_raw = {n: m for n, m in level.measures.items() if m.agg in RAW_ONLY}
    fb = quote_ident(finer.bucket_column)
    keys = ", ".join(dims)
    n_keys = len(dims) + 1
    group = ", ".join(str(i + 1) for i in range(n_keys))
    # Pass 1: counts, sums, min, max, and n / mean of avg and stddev.
    part_cols, first, second = [], [], []
    for n, m in merged.items():
        c = quote_ident(n)
        if m.agg == "count":
            part_cols.append(c)
            first.append(f"sum({c})::bigint AS {c}")
        elif m.agg == "sum":
            part_cols.append(c)
            first.append(f"COALESCE(sum({c}), 0)::float8 AS {c}")
        elif m.agg in ("min", "max"):
            part_cols.append(c)
            first.append(f"{m.agg}({c}) AS {c}")
        else:
            pn = quote_ident(f"{n}__n")
            mean_in = c if m.agg == "avg" else quote_ident(f"{n}__mean")
            part_cols += [pn, f"{mean_in} AS {quote_ident(n + '__pmean')}"]
            pm = quote_ident(n + "__pmean")
            mean = f"(sum({pn} * {pm}) / NULLIF(sum({pn}), 0))::float8"
            first += [f"sum({pn})::bigint AS {pn}", f"{mean} AS {quote_ident(n + '__mean')}"]
            if m.agg == "stddev":
                m2 = quote_ident(f"{n}__m2")
                part_cols.append(m2)
                mm = quote_ident(n + "__mean")
                # Pass 2 (over the parts joined to their totals).
                second.append(
                    f"(sum(p.{m2} + p.{pn} * (p.{pm} - t.{mm}) * (p.{pm} - t.{mm})))::float8 "
                    f"AS {m2}"
                )
    parts = (
        f"parts AS MATERIALIZED (SELECT {keys}, {_into(finer, level.grain)} AS {bucket}, "
        f"{', '.join(part_cols)} FROM {quote_ident(finer.table)} "
        f"WHERE {fb} >= :fa AND {fb} < :fb)"
    )
    totals = f"totals AS (SELECT {keys}, {bucket}, {', '.join(first)} FROM parts GROUP BY {group})"
    ctes = [parts, totals]
    merged_rel = "totals"
    if second:
        t_cols = ", ".join(
            f"t.{quote_ident(c)}" for c in [*level.spec.dimensions, level.bucket_column]
        )
        ctes.append(
            f"spread AS (SELECT {t_cols}, {', '.join(second)} FROM totals t "
            f"JOIN parts p USING ({keys}, {bucket}) GROUP BY {group})"
        )
        merged_rel = f"totals JOIN spread USING ({keys}, {bucket})"
    figures = f"SELECT * FROM {merged_rel}"
    if from_raw:
        ctes.insert(0, _raw_figures(level, params, from_raw, False, flagged_ids))
        raw_cols = ", ".join(f"a.{quote_ident(n)}" for n in from_raw)
        figures = (
            f"SELECT m.*, {raw_cols} FROM ({figures}) m LEFT JOIN agg a USING ({keys}, {bucket})"
        )
    # avg: the merged mean; stddev: from M2 (NULL below two values, like stddev_samp).
    final = []
    for n, m in merged.items():
        c = quote_ident(n)
        if m.agg == "avg":
            final.append(f"{quote_ident(n + '__mean')} AS {c}")
        elif m.agg == "stddev":
            pn, m2 = quote_ident(f"{n}__n"), quote_ident(f"{n}__m2")
            final.append(
                f"(CASE WHEN {pn} > 1 THEN sqrt(GREATEST({m2}, 0) / ({pn} - 1)) END)::float8 AS {c}"
            )
    ctes.append(f"fig AS ({figures})")
    ctes.append(
        f"final AS (SELECT *, {', '.join(final)} FROM fig)"
        if final
        else "final AS (SELECT * FROM fig)"
    )
    hidden = partial_columns(level) if with_partials else []
    target = ", ".join([*dims, bucket, *map(quote_ident, [*level.measures, *hidden])])
    ins = (
        f"ins AS (INSERT INTO {quote_ident(level.table)} ({target}) "
        f"SELECT {', '.join([*dims, bucket, *_outputs(level), *map(quote_ident, hidden)])} "
        "FROM final RETURNING 1)"
    )
    everything = next((n for n, m in merged.items() if m.agg == "count" and m.filter is None), None)
    if from_raw:
        summary = _summary(level, "COALESCE(sum(_good), 0)", "agg")
    else:
        good = (
            f"(SELECT COALESCE(sum({quote_ident(everything)}), 0) FROM totals)"
            if everything
            else "0"
        )
        summary = _summary(level, good, None)
    return f"WITH {', '.join([*ctes, ins])} " + summary, params


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
    merged_chunks: int = 0  # chunks whose mergeable measures came from the level below
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


def _columns(conn: sa.Connection, table: str) -> set[str]:
    schema, name = table.split(".")
    return set(
        conn.execute(
            sa.text(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = :s AND table_name = :n"
            ),
            {"s": schema, "n": name},
        ).scalars()
    )


def ids_flagged(conn: sa.Connection, table: str) -> bool:
    """Whether ``table``'s inserts note repeated ids (the trigger of sql/022)."""
    return bool(
        conn.execute(
            sa.text(
                "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(:t) "
                "AND tgname = 'log_event_ids_insert' AND tgenabled <> 'D')"
            ),
            {"t": table},
        ).scalar_one()
    )


def finer_is_current(
    conn: sa.Connection, level: RollupLevel, finer: RollupLevel, chunk: Window, zone: ZoneInfo
) -> bool:
    """Whether ``finer``'s rows inside ``chunk`` can be merged: every one of its partitions
    there was written (versions.py), none before the latest change the late-data drain
    recorded for the raw hours of the chunk, no change logged there and not drained yet,
    and with its partials (not rows from before sql/022). A change committed while this
    chunk runs is healed as for readings: the drain gives its hour a new version, and
    self-healing recomputes the finer level and then this one."""
    starts = sorted(set(partition_starts(finer.grain, chunk, zone)))
    if not starts:
        return False
    ends = [*starts[1:], chunk.end]
    # Per finer partition: written, and after the latest version of the raw hours under it.
    written, current = conn.execute(
        sa.text(
            "SELECT count(v.asset), COALESCE(bool_and(v.computed_from >= COALESCE((SELECT "
            "max(r.version) FROM ops.partition_versions r WHERE r.asset = :src "
            "AND r.partition_start >= p.s AND r.partition_start < p.e), 0)), false) "
            "FROM unnest(CAST(:s AS timestamptz[]), CAST(:e AS timestamptz[])) AS p(s, e) "
            "LEFT JOIN ops.partition_versions v ON v.asset = :a AND v.partition_start = p.s"
        ),
        {"a": finer.asset, "s": starts, "e": ends, "src": "raw_" + asset_name(finer.source.table)},
    ).one()
    if written != len(starts) or not current:
        return False
    # A change logged but not drained yet (raw.source_change_log, sql/018 and 021): the
    # finer rows may predate it, so the chunk is read from raw (exact either way).
    pending = conn.execute(
        sa.text(
            "SELECT EXISTS (SELECT 1 FROM raw.source_change_log WHERE source = :src "
            "AND bucket_start >= :lo AND bucket_start < :hi)"
        ),
        {"src": "raw_" + asset_name(finer.source.table), "lo": chunk.start, "hi": chunk.end},
    ).scalar_one()
    if pending:
        return False
    # (__mean and __m2 are NULL without values; __n is 0 then, NULL only before sql/022.)
    hidden = [c for n in level.measures for c in partials(n, level.measures[n])[:1]]
    if not hidden:
        return True
    fa, fb = _bucket_bounds(finer, chunk, zone)
    b = quote_ident(finer.bucket_column)
    missing = " OR ".join(f"{quote_ident(c)} IS NULL" for c in hidden)
    return not conn.execute(
        sa.text(
            f"SELECT EXISTS (SELECT 1 FROM {quote_ident(finer.table)} "
            f"WHERE {b} >= :fa AND {b} < :fb AND ({missing}))"
        ),
        {"fa": fa, "fb": fb},
    ).scalar_one()


def write_level(
    warehouse: WarehouseResource,
    level: RollupLevel,
    window: Window,
    zone: ZoneInfo,
    future_tolerance_seconds: float,
    finer: RollupLevel | None = None,
) -> EventWriteReport:
    """Replace ``level``'s buckets inside ``window``: from ``finer``'s rows (the level
    below, merged) where they are current, else from the raw events."""
    report = EventWriteReport(level.table, window)
    table, bucket = quote_ident(level.table), quote_ident(level.bucket_column)
    src, t = quote_ident(level.source.table), quote_ident(level.source.time_column)
    with warehouse.get_engine().connect() as conn:
        flagged = level.source.id_column is not None and ids_flagged(conn, level.source.table)
        mine = _columns(conn, level.table)
        with_partials = set(partial_columns(level)) <= mine
        mergeable = (
            can_merge(level, finer)
            and finer is not None
            and set(partial_columns(finer)) >= set(partial_columns(level))
            and set(partial_columns(level)) <= _columns(conn, finer.table)
        )
    raw_stmt = insert_sql(level, flagged, with_partials)
    merge_stmt = merge_sql(level, finer, flagged, with_partials) if mergeable and finer else None
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
            merge = (
                merge_stmt is not None
                and finer is not None
                and finer_is_current(conn, level, finer, chunk, zone)
            )
            statement, params = merge_stmt if merge and merge_stmt else raw_stmt
            report.rows_deleted += conn.execute(
                sa.text(f"DELETE FROM {table} WHERE {bucket} >= :a AND {bucket} < :b"),
                {"a": lo, "b": hi},
            ).rowcount
            extra = {}
            if merge and finer is not None:
                report.merged_chunks += 1
                extra = dict(zip(("fa", "fb"), _bucket_bounds(finer, chunk, zone), strict=True))
            row = conn.execute(
                sa.text(statement),
                {
                    **params,
                    **bounds,
                    **extra,
                    "origin": chunk.start,
                    "tz": zone.key,
                    "future_tolerance": future_tolerance_seconds,
                },
            ).one()
            good, *bad, inserted = (int(x) for x in row)
            report.rows_written += inserted
            report.good_events += good
            if not merge or any(m.agg in RAW_ONLY for m in level.measures.values()):
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
