"""Retention: delete what is past its time, and never what no rollup holds.

The rule for raw readings is stated against raw itself. A local day of raw readings may be
deleted only when, for every (device, field) with valid readings that day:

- its daily rollup exists, counts exactly the day's valid readings and has its median;
- where the field has an optimal band that day, its conditions row counts them too;
- every hour of it (while hourly rollups are retained) exists, counts the hour's valid
  readings and has its median (and every minute, while 1m windows are retained);
- its week is whole: every day of the week still in raw is rolled up as above, and the
  weekly rollup counts the sum of its days and has its median (a median cannot be
  recomputed once raw is gone); so is its month while rollup_monthly's median from raw
  is on (AGG_PIPELINE_MONTHLY_MEDIAN).

These checks are not written per level: every level of ``core/hierarchy.py`` that holds
raw (``hierarchy.holds_raw``: staged from raw, or a median from raw) gets its check by
bucket kind (``verdict_sql``), so a new level is waited for without a line here.

The check is set-based and runs in the same REPEATABLE READ transaction as the delete, so a
reading that arrives meanwhile is neither counted nor deleted. Deletes go by key range
(never ``ctid``, which is unique per partition only); on a range-partitioned raw table a
partition that lies wholly inside released days is dropped instead. Released days are
recorded in ``ops.raw_retention_ledger``; the writers keep the rollups of a released day
(they are final) instead of recomputing them from what is left.

Raw events and diagnostics go only after the daily assets computed from them were
materialized for that day; derived tables go by age.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from agg_pipeline.config.catalogue import Catalogue, PostgresSource
from agg_pipeline.config.settings import Settings
from agg_pipeline.core import hierarchy
from agg_pipeline.warehouse import levels, statements

# A week's check and deletes wait at most this long for a lock (e.g. dropping a partition
# needs an exclusive lock on the parent table); then that step is skipped and retried on
# the next run, instead of blocking ingestion behind it.
LOCK_TIMEOUT = "10s"


@dataclass(frozen=True)
class Policy:
    """Days kept per kind of table (0 = forever). Built from settings, overridable per run."""

    raw_days: int
    downsample_days: int
    hourly_days: int
    device_metrics_days: int
    diagnostic_summary_days: int
    patterns_days: int
    events_days: int
    raw_diagnostics_days: int
    analytics_raw_days: int
    analytics_hourly_days: int
    staging_hours: int
    batch_rows: int

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: int | None) -> Policy:
        values = {
            "raw_days": settings.retention_raw_days,
            "downsample_days": settings.retention_downsample_days,
            "hourly_days": settings.retention_hourly_days,
            "device_metrics_days": settings.retention_device_metrics_days,
            "diagnostic_summary_days": settings.retention_diagnostic_summary_days,
            "patterns_days": settings.retention_patterns_days,
            "events_days": settings.retention_events_days,
            "raw_diagnostics_days": settings.retention_raw_diagnostics_days,
            "analytics_raw_days": settings.retention_analytics_raw_days,
            "analytics_hourly_days": settings.retention_analytics_hourly_days,
            "staging_hours": settings.retention_staging_hours,
            "batch_rows": settings.retention_batch_rows,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class TableResult:
    """What retention did (or, in a dry run, would do) to one table."""

    cutoff: str
    rows: int = 0
    days_kept: dict[str, str] = field(default_factory=dict)
    partitions_dropped: list[str] = field(default_factory=list)
    skipped: str | None = None
    ids_forgotten: int = 0  # repeated-id ledger entries of released events (sql/022)

    def as_dict(self) -> dict:
        out: dict = {"cutoff": self.cutoff, "rows": self.rows}
        if self.ids_forgotten:
            out["ids_forgotten"] = self.ids_forgotten
        if self.days_kept:
            out["days_kept"] = self.days_kept
        if self.partitions_dropped:
            out["partitions_dropped"] = self.partitions_dropped
        if self.skipped:
            out["skipped"] = self.skipped
        return out


# --------------------------------------------------------------------------------------
# The ledger of released days
# --------------------------------------------------------------------------------------


def released_days(conn: sa.Connection, source_table: str, days: Iterable[date]) -> set[date]:
    """The days among ``days`` whose raw rows in ``source_table`` retention released."""
    wanted = sorted(set(days))
    if not wanted:
        return set()
    rows = conn.execute(
        sa.text(
            "SELECT day FROM ops.raw_retention_ledger "
            "WHERE source_table = :t AND day = ANY (CAST(:days AS date[]))"
        ),
        {"t": source_table, "days": wanted},
    )
    return {r[0] for r in rows}


def _record_release(
    conn: sa.Connection, source_table: str, day: date, rows: int, method: str
) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO ops.raw_retention_ledger (source_table, day, rows_deleted, method) "
            "VALUES (:t, :d, :n, :m) ON CONFLICT (source_table, day) DO UPDATE "
            "SET rows_deleted = ops.raw_retention_ledger.rows_deleted + EXCLUDED.rows_deleted, "
            "released_at = now()"
        ),
        {"t": source_table, "d": day, "n": rows, "m": method},
    )


# --------------------------------------------------------------------------------------
# Raw readings
# --------------------------------------------------------------------------------------

# Valid readings are counted exactly as the writers count them (warehouse/sql/
# stage_partials_1m.sql): a device name that is not a `bad_device`, a catalogue field, a
# value inside the field's physical bounds (false for NULL, NaN and +/-inf), one reading per
# (device, field, time). ``bins`` holds them per (device, field, base bin); every level
# that holds raw (``raw_holders``) is then compared with them, built from the registry.
_RAW_BINS = """
catalogue AS (
    SELECT * FROM unnest(CAST(:fields AS text[]), CAST(:lo AS float8[]), CAST(:hi AS float8[]))
         AS c (field, lo, hi)
),
bands AS (
    SELECT * FROM unnest(CAST(:band_days AS date[]), CAST(:band_fields AS text[]))
         AS b (day, field)
),
bins AS (
    SELECT v.device, v.field, v.bin, v.n, (v.bin AT TIME ZONE :tz)::date AS day,
           s.id AS sensor_id
    FROM (
        SELECT r.{device}::text AS device, r.{field}::text AS field,
               date_bin('{base}', r.{time}, :origin) AS bin,
               count(DISTINCT r.{time}) AS n
        FROM {raw} AS r
        JOIN catalogue AS c ON c.field = r.{field}::text
        WHERE r.{time} >= :scan_start AND r.{time} < :scan_end
          AND r.{value} >= c.lo AND r.{value} <= c.hi
          AND octet_length(r.{device}::text) BETWEEN 1 AND :max_name_bytes
          AND r.{device}::text !~ :bad_name_pattern
        GROUP BY 1, 2, 3
    ) AS v
    LEFT JOIN (
        SELECT s.id, d.device_code, s.field
        FROM iot.sensors AS s JOIN iot.devices AS d ON d.id = s.device_id
    ) AS s ON s.device_code = v.device AND s.field = v.field
),
days AS (
    SELECT device, field, sensor_id, day, sum(n) AS n FROM bins GROUP BY 1, 2, 3, 4
)"""

# A daily-level (``with_conditions``) day with an optimal band: its conditions row counts
# the day's valid readings too.
_CONDITIONS_PROBLEMS = """    SELECT d.day, d.device, d.field,
           CASE WHEN c.sensor_id IS NULL THEN 'no conditions row'
                ELSE 'conditions count differs from raw' END AS reason
    FROM days AS d
    JOIN bands AS b ON b.day = d.day AND b.field = d.field
    LEFT JOIN bi.daily_sensor_conditions AS c
      ON c.sensor_id = d.sensor_id AND c.metric_date = d.day
    WHERE c.sensor_id IS NULL OR c.reading_count <> d.n"""[1:]


def _day_start(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone)


def _week_start(day: date) -> date:
    return day - timedelta(days=day.weekday())


def raw_holders(settings: Settings) -> tuple[hierarchy.Level, ...]:
    """The levels raw for a day waits for (``hierarchy.holds_raw``): staged from raw, or
    with a median from raw that is switched on (rollup_monthly's AGG_PIPELINE_MONTHLY_
    MEDIAN off: its months are merged from daily alone, and do not wait)."""
    return tuple(
        lv
        for lv in hierarchy.DERIVED
        if hierarchy.holds_raw(lv)
        and (lv.median_setting is None or bool(getattr(settings, lv.median_setting)))
    )


def _is_period(level: hierarchy.Level) -> bool:
    """A level of several local days (week, month), summed from a date-keyed parent."""
    return level.bucket in (hierarchy.Bucket.WEEK, hierarchy.Bucket.MONTH)


def period_bounds(level: hierarchy.Level, day: date) -> tuple[date, date]:
    """[first day, day after the last) of the ``level`` bucket holding ``day``."""
    if level.bucket is hierarchy.Bucket.WEEK:
        start = _week_start(day)
        return start, start + timedelta(days=7)
    if level.bucket is hierarchy.Bucket.MONTH:
        start = day.replace(day=1)
        return start, (start + timedelta(days=32)).replace(day=1)
    if level.bucket is hierarchy.Bucket.LOCAL_DAY:
        return day, day + timedelta(days=1)
    raise ValueError(f"level {level.key!r}: {level.bucket} is no bucket of local days")


def _case(checks: list[tuple[str, str]]) -> str:
    """CASE over (condition, reason) in order; the last reason is the ELSE."""
    whens = " ".join(f"WHEN {c} THEN '{r}'" for c, r in checks[:-1])
    return f"CASE {whens} ELSE '{checks[-1][1]}' END"


def _row_checks(level: hierarchy.Level, missing: str, versus: str) -> list[tuple[str, str]]:
    checks = [("x.sensor_id IS NULL", missing)]
    if level.imported_history:
        checks.append(
            ("x.origin <> 'computed'", f"{level.key} rollup imported, not computed from raw")
        )
    checks.append(("x.sample_count <> h.n", f"{level.key} rollup counts differ {versus}"))
    if level.median is not hierarchy.Median.NONE:
        checks.append(("x.median_value IS NULL", f"{level.key} median missing"))
    return checks


def _unit(step: timedelta) -> str:
    """'an hour', 'a minute', 'a 5-minute window': what one bucket of ``step`` is called."""
    text = levels.interval_literal(step)
    n, unit = text.split()
    if n == "1":
        return ("an " if unit[0] in "aeiouh" else "a ") + unit
    return f"a {n}-{unit.rstrip('s')} window"


def _level_problems(level: hierarchy.Level, base: timedelta, i: int) -> str:
    """Per (day, device, field) what ``level`` lacks against raw (rows of ``problems``);
    rows before its retention (:from_<i>) are not asked for."""
    t, col = statements.quote_ident(level.table), statements.quote_ident(level.bucket_column)
    if level.bucket is hierarchy.Bucket.FIXED:
        assert level.step is not None
        if level.step % base:
            raise ValueError(f"level {level.key!r}: its step is no multiple of {base}")
        step = levels.interval_literal(level.step)
        source = (
            f"(SELECT device, field, sensor_id, day, date_bin('{step}', bin, :origin) AS b, "
            "sum(n) AS n FROM bins GROUP BY 1, 2, 3, 4, 5)"
        )
        checks = _row_checks(level, f"{_unit(level.step)} has no {level.key} rollup", "from raw")
    elif level.bucket is hierarchy.Bucket.LOCAL_DAY:
        source = "(SELECT device, field, sensor_id, day, day AS b, n FROM days)"
        checks = _row_checks(level, f"no {level.key} rollup", "from raw")
    else:
        raise ValueError(f"level {level.key!r}: no raw-release check for {level.bucket}")
    conds = " OR ".join(c for c, _ in checks)
    return (
        f"    SELECT h.day, h.device, h.field, {_case(checks)} AS reason\n"
        f"    FROM {source} AS h\n"
        f"    LEFT JOIN {t} AS x ON x.sensor_id = h.sensor_id AND x.{col} = h.b\n"
        f"    WHERE h.day >= :from_{i} AND ({conds})"
    )


def _period_problems(level: hierarchy.Level, i: int) -> str:
    """Per (bucket start, device, field) what a week / month level lacks against the sum
    of its computed days (rows of ``period_problems``) over [:plo_<i>, :phi_<i>)."""
    parent = hierarchy.parent_of(level)
    if not parent.key_is_date:
        raise ValueError(f"level {level.key!r}: a period level needs a date-keyed parent")
    pt, pc = statements.quote_ident(parent.table), statements.quote_ident(parent.bucket_column)
    t, col = statements.quote_ident(level.table), statements.quote_ident(level.bucket_column)
    # Imported days never feed the level above (levels.parts_sql).
    computed = " AND a.origin = 'computed'" if parent.imported_history else ""
    checks = _row_checks(level, f"no {level.key} rollup", "from its days")
    conds = " OR ".join(c for c, _ in checks)
    return (
        f"    SELECT '{level.key}' AS level, h.b AS day, dv.device_code AS device, s.field,\n"
        f"           {_case(checks)} AS reason\n"
        f"    FROM (SELECT a.sensor_id, {levels.bucket_sql(level, f'a.{pc}')} AS b,\n"
        f"                 sum(a.sample_count) AS n\n"
        f"          FROM {pt} AS a WHERE a.{pc} >= :plo_{i} AND a.{pc} < :phi_{i}{computed}\n"
        "            AND a.sensor_id IN (SELECT sensor_id FROM days WHERE sensor_id IS NOT NULL)\n"
        "          GROUP BY 1, 2) AS h\n"
        "    JOIN iot.sensors AS s ON s.id = h.sensor_id\n"
        "    JOIN iot.devices AS dv ON dv.id = s.device_id\n"
        f"    LEFT JOIN {t} AS x ON x.sensor_id = h.sensor_id AND x.{col} = h.b\n"
        f"    WHERE {conds}"
    )


def verdict_sql(raw: _Raw, holders: Sequence[hierarchy.Level]) -> str:
    """The raw-release verdict over ``holders`` (``raw_holders``): rows of (scope 'day' or
    'period', level key, day or bucket start, reason, series, example series)."""
    steps = [lv.step for lv in holders if lv.bucket is hierarchy.Bucket.FIXED and lv.step]
    base = min(steps, default=timedelta(hours=1))
    day_parts, period_parts = [], []
    for i, lv in enumerate(holders):
        if _is_period(lv):
            period_parts.append(_period_problems(lv, i))
        else:
            day_parts.append(_level_problems(lv, base, i))
            if lv.with_conditions:
                day_parts.append(_CONDITIONS_PROBLEMS)
    if not day_parts:
        day_parts.append("    SELECT NULL::date, NULL::text, NULL::text, NULL::text WHERE false")
    if not period_parts:
        period_parts.append(
            "    SELECT NULL::text, NULL::date, NULL::text, NULL::text, NULL::text WHERE false"
        )
    bins = _RAW_BINS.format(
        raw=raw.table,
        time=raw.time,
        device=raw.device,
        field=raw.field,
        value=raw.value,
        base=levels.interval_literal(base),
    )
    union = "\n    UNION ALL\n"
    return (
        f"WITH {bins},\nproblems (day, device, field, reason) AS (\n{union.join(day_parts)}\n),\n"
        f"period_problems (level, day, device, field, reason) AS (\n"
        f"{union.join(period_parts)}\n)\n"
        "SELECT 'day' AS scope, '' AS level, day, reason, count(*) AS series,\n"
        "       min(device || '/' || field) AS example\n"
        "FROM problems GROUP BY 1, 2, 3, 4\n"
        "UNION ALL\n"
        "SELECT 'period', level, day, reason, count(*), min(device || '/' || field)\n"
        "FROM period_problems GROUP BY 1, 2, 3, 4\n"
        "ORDER BY 1, 2, 3, 4"
    )


@dataclass(frozen=True)
class _Raw:
    """The quoted identifiers of a PostgreSQL raw readings table."""

    table: str
    time: str
    device: str
    field: str
    value: str

    @classmethod
    def of(cls, source: PostgresSource) -> _Raw:
        q = statements.quote_ident
        return cls(
            q(source.table),
            q(source.time_column),
            q(source.device_column),
            q(source.field_column),
            q(source.value_column),
        )


def _candidate_days(conn: sa.Connection, raw: _Raw, cutoff: date, zone: ZoneInfo) -> list[date]:
    """Local days before ``cutoff`` that still hold raw rows (oldest first)."""
    cutoff_ts = _day_start(cutoff, zone)
    oldest = conn.execute(
        sa.text(f"SELECT min({raw.time}) FROM {raw.table} WHERE {raw.time} < :c"),
        {"c": cutoff_ts},
    ).scalar_one()
    if oldest is None:
        return []
    days, day = [], oldest.astimezone(zone).date()
    while day < cutoff:
        days.append(day)
        day += timedelta(days=1)
    # Skip empty days cheaply (one index probe each), so a gap of months costs nothing.
    return [
        d
        for d in days
        if conn.execute(
            sa.text(
                f"SELECT EXISTS (SELECT 1 FROM {raw.table} "
                f"WHERE {raw.time} >= :s AND {raw.time} < :e)"
            ),
            {"s": _day_start(d, zone), "e": _day_start(d + timedelta(days=1), zone)},
        ).scalar_one()
    ]


def raw_verdicts(
    conn: sa.Connection,
    catalogue: Catalogue,
    settings: Settings,
    candidates: Sequence[date],
    retained_from: Mapping[str, date],
    bands: Callable[[sa.Connection, list[date]], Iterable[tuple[date, str]]],
    origin: datetime,
) -> dict[date, list[str]]:
    """Why each candidate day may not be deleted yet (an empty list: it may).

    ``retained_from`` gives per level key the first day its rows are kept (a level with
    no entry keeps every day): a day before it is not asked of that level."""
    source = catalogue.source
    assert isinstance(source, PostgresSource)
    raw, zone = _Raw.of(source), settings.zone
    first, last = min(candidates), max(candidates)
    wanted = raw_holders(settings)
    periods = [lv for lv in wanted if _is_period(lv)]
    # Every day of the candidates' weeks / months: one of them not rolled up blocks the
    # bucket's median, so every day of it.
    scan_lo = min([first, *(period_bounds(p, first)[0] for p in periods)])
    scan_hi = max([last + timedelta(days=1), *(period_bounds(p, last)[1] for p in periods)])
    holders = [lv for lv in wanted if retained_from.get(lv.key, date.min) < scan_hi]
    periods = [lv for lv in holders if _is_period(lv)]
    scan_days = [scan_lo + timedelta(days=i) for i in range((scan_hi - scan_lo).days)]
    band_keys = sorted(bands(conn, scan_days))
    bounds: dict[str, object] = {}
    for i, lv in enumerate(holders):
        bounds[f"from_{i}"] = retained_from.get(lv.key, date.min)
        if _is_period(lv):
            bounds[f"plo_{i}"] = period_bounds(lv, first)[0]
            bounds[f"phi_{i}"] = period_bounds(lv, last)[1]
    rows = conn.execute(
        sa.text(verdict_sql(raw, holders)),
        {
            **catalogue.bounds_arrays(),
            **statements.name_params(),
            **bounds,
            "band_days": [d for d, _ in band_keys],
            "band_fields": [f for _, f in band_keys],
            "tz": settings.timezone,
            "origin": origin,
            "scan_start": _day_start(scan_lo, zone),
            "scan_end": _day_start(scan_hi, zone),
        },
    ).all()
    by_period: dict[tuple[str, date], list[str]] = defaultdict(list)
    own: dict[date, list[str]] = defaultdict(list)
    for scope, key, day, reason, series, example in rows:
        text = f"{reason} ({series} series, e.g. {example})"
        if scope == "period":
            by_period[(key, day)].append(f"{hierarchy.BY_KEY[key].bucket.value} of {day}: {text}")
        else:
            own[day].append(text)
            for p in periods:
                by_period[(p.key, period_bounds(p, day)[0])].append(f"{day}: {text}")
    verdicts = {}
    for day in candidates:
        reasons = list(own.get(day, []))
        for p in periods:
            for r in by_period.get((p.key, period_bounds(p, day)[0]), []):
                if not r.startswith(f"{day}:") and r not in reasons:
                    reasons.append(r)
        verdicts[day] = reasons
    return verdicts


def retained_from(policy: Policy, today: date) -> dict[str, date]:
    """Per aged level key, the first day ``policy`` keeps its rows (0 days: forever)."""
    out = {}
    for lv in hierarchy.DERIVED:
        if lv.retention_setting is not None:
            days = getattr(policy, _policy_field(lv.retention_setting))
            out[lv.key] = today - timedelta(days=days) if days else date.min
    return out


_BOUND = re.compile(r"^FOR VALUES FROM \('([^']+)'\) TO \('([^']+)'\)$")


def _time_partitions(conn: sa.Connection, source: PostgresSource) -> list[tuple[str, str, str]]:
    """Leaf range partitions of the raw table keyed on its time column alone, as
    (quoted name, lower, upper) - empty for a plain table."""
    schema, table = source.schema_and_table
    keyed_on_time = conn.execute(
        sa.text(
            "SELECT p.partstrat = 'r' AND p.partnatts = 1 AND a.attname = :col "
            "FROM pg_partitioned_table AS p JOIN pg_class AS c ON c.oid = p.partrelid "
            "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
            "JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum = p.partattrs[0] "
            "WHERE n.nspname = :s AND c.relname = :t"
        ),
        {"s": schema, "t": table, "col": source.time_column},
    ).scalar()
    if not keyed_on_time:
        return []
    rows = conn.execute(
        sa.text(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), "
            "pg_get_expr(c.relpartbound, c.oid) "
            "FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
            "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
            "WHERE i.inhparent = CAST(:parent AS regclass) AND c.relkind = 'r'"
        ),
        {"parent": statements.quote_ident(source.table)},
    ).all()
    out = []
    for name, bound in rows:
        m = _BOUND.match(bound or "")
        if m:  # DEFAULT and MINVALUE/MAXVALUE partitions are never dropped
            out.append((name, m.group(1), m.group(2)))
    return out


def _days_overlapped(lo: datetime, hi: datetime, zone: ZoneInfo) -> list[date]:
    first, last = lo.astimezone(zone).date(), (hi - timedelta(microseconds=1)).astimezone(zone)
    return [first + timedelta(days=i) for i in range((last.date() - first).days + 1)]


def _day_rows(conn: sa.Connection, raw: _Raw, day: date, zone: ZoneInfo) -> int:
    """Rows of ``raw`` in one local day."""
    return conn.execute(
        sa.text(f"SELECT count(*) FROM {raw.table} WHERE {raw.time} >= :s AND {raw.time} < :e"),
        {"s": _day_start(day, zone), "e": _day_start(day + timedelta(days=1), zone)},
    ).scalar_one()


def _delete_day(conn: sa.Connection, raw: _Raw, day: date, zone: ZoneInfo, batch_rows: int) -> int:
    """Delete one local day by key range, in time slices of about ``batch_rows`` rows."""
    return sum(
        conn.execute(
            sa.text(f"DELETE FROM {raw.table} WHERE {raw.time} >= :s AND {raw.time} < :e"),
            {"s": s, "e": e},
        ).rowcount
        for s, e in _day_slices(conn, raw, day, zone, batch_rows)
    )


def _day_slices(
    conn: sa.Connection, raw: _Raw, day: date, zone: ZoneInfo, batch_rows: int
) -> list[tuple[datetime, datetime]]:
    """One local day cut into time slices of about ``batch_rows`` rows each."""
    start, end = _day_start(day, zone), _day_start(day + timedelta(days=1), zone)
    slices = max(1, -(-_day_rows(conn, raw, day, zone) // batch_rows))
    step = (end - start) / slices
    return [
        (start + step * i, end if i == slices - 1 else start + step * (i + 1))
        for i in range(slices)
    ]


# The repeated-id ledger (raw.event_ids_seen, sql/022) notes every id its triggers saw;
# without this it would grow with every event ever written. An id is forgotten once no
# row of it is left in the raw table: its copies in later days keep it (a copy that
# arrives after all of them went is then counted, as it would be without the ledger).
LEDGER = "raw.event_ids_seen"


def _delete_day_and_forget_ids(
    conn: sa.Connection, raw: _Raw, source: str, id_column: str, day: date, zone: ZoneInfo,
    batch_rows: int,
) -> tuple[int, int]:  # fmt: skip
    """``_delete_day``, noting the ids it deleted (a temporary table of the id column's
    own type, so the last check is an index probe of (id, time)), then forgetting those
    of them with no row left; (rows deleted, ids forgotten), in the caller's transaction."""
    i = statements.quote_ident(id_column)
    conn.execute(
        sa.text(
            f"CREATE TEMP TABLE released_ids ON COMMIT DROP AS "
            f"SELECT {i} AS id FROM {raw.table} WITH NO DATA"
        )
    )
    deleted = 0
    for s, e in _day_slices(conn, raw, day, zone, batch_rows):
        deleted += conn.execute(
            sa.text(
                f"WITH gone AS (DELETE FROM {raw.table} WHERE {raw.time} >= :s "
                f"AND {raw.time} < :e RETURNING {i} AS id), "
                "noted AS (INSERT INTO released_ids SELECT id FROM gone WHERE id IS NOT NULL) "
                "SELECT count(*) FROM gone"
            ),
            {"s": s, "e": e},
        ).scalar_one()
    forgotten = conn.execute(
        sa.text(
            f"DELETE FROM {LEDGER} l USING (SELECT DISTINCT id FROM released_ids) g "
            "WHERE l.source = :source AND l.id = g.id::text "
            f"AND NOT EXISTS (SELECT 1 FROM {raw.table} e WHERE e.{i} = g.id)"
        ),
        {"source": source},
    ).rowcount
    return deleted, forgotten


def _has_ledger(conn: sa.Connection) -> bool:
    return conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": LEDGER}).scalar_one()


def raw_readings(
    engine: sa.Engine,
    catalogue: Catalogue,
    settings: Settings,
    policy: Policy,
    today: date,
    dry_run: bool,
    bands: Callable[[sa.Connection, list[date]], Iterable[tuple[date, str]]],
    origin: datetime,
) -> TableResult:
    """Release the safe raw days past retention (see the module docstring)."""
    source = catalogue.source
    assert isinstance(source, PostgresSource)
    raw, zone = _Raw.of(source), settings.zone
    cutoff = today - timedelta(days=policy.raw_days)
    kept_from = retained_from(policy, today)
    result = TableResult(cutoff=str(cutoff))
    with engine.connect() as conn:
        candidates = _candidate_days(conn, raw, cutoff, zone)
    if not candidates:
        return result
    # One transaction per week: the check (which must see the whole week) and the
    # deletes of its safe days share one snapshot, so they are all-or-nothing.
    by_week: dict[date, list[date]] = defaultdict(list)
    for day in candidates:
        by_week[_week_start(day)].append(day)
    partitions_done: set[str] = set()
    for week in sorted(by_week):
        days = by_week[week]
        with engine.connect() as conn:
            conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            conn.execute(
                sa.text("SELECT set_config('lock_timeout', :v, true)"), {"v": LOCK_TIMEOUT}
            )
            verdicts = raw_verdicts(conn, catalogue, settings, days, kept_from, bands, origin)
            already = released_days(conn, source.table, days)
            safe = []
            for day in days:
                if day in already:
                    # Rows that arrived after the day was released are in no rollup.
                    result.days_kept[str(day)] = (
                        "readings arrived after this day's raw data was released; they are "
                        "in no rollup and are kept (delete them by hand if unwanted)"
                    )
                elif verdicts[day]:
                    result.days_kept[str(day)] = "not yet: " + "; ".join(verdicts[day])
                else:
                    safe.append(day)
            if not safe:
                conn.rollback()
                continue
            if dry_run:
                result.rows += sum(_day_rows(conn, raw, day, zone) for day in safe)
                conn.rollback()
                continue
            dropped_days: set[date] = set()
            for name, lo_text, hi_text in _time_partitions(conn, source):
                if name in partitions_done:
                    continue
                lo, hi = conn.execute(
                    sa.text("SELECT CAST(:lo AS timestamptz), CAST(:hi AS timestamptz)"),
                    {"lo": lo_text, "hi": hi_text},
                ).one()
                covered = set(_days_overlapped(lo, hi, zone))
                # Droppable: it holds a day released now, and every other day of it was
                # released now or before.
                others = covered - set(safe)
                if covered == others or others - released_days(conn, source.table, others):
                    continue
                n = conn.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar_one()
                savepoint = conn.begin_nested()
                try:
                    conn.execute(sa.text(f"DROP TABLE {name}"))
                    savepoint.commit()
                except sa.exc.OperationalError:  # lock timeout: delete by range instead
                    savepoint.rollback()
                    continue
                partitions_done.add(name)
                result.partitions_dropped.append(name)
                result.rows += n
                for d in covered:
                    if d in safe:
                        dropped_days.add(d)
                        _record_release(conn, source.table, d, 0, "drop partition")
            for day in safe:
                n = _delete_day(conn, raw, day, zone, policy.batch_rows)
                result.rows += n
                # The day's kept hour values (migration 023) stood for its raw rows: no
                # level reads them once the day is released.
                conn.execute(
                    sa.text(
                        "DELETE FROM bi.hour_values WHERE hour_start >= :s AND hour_start < :e"
                    ),
                    {"s": _day_start(day, zone), "e": _day_start(day + timedelta(days=1), zone)},
                )
                if day not in dropped_days:
                    _record_release(conn, source.table, day, n, "delete")
                elif n:
                    _record_release(conn, source.table, day, n, "drop partition")
            # The late-data trigger logged these deletes as changes of old hours; they are
            # not late data (the rollups are final), so this transaction's entries go too.
            conn.execute(sa.text(_FORGET_OWN_CHANGES))
            conn.commit()
    return result


# Rows this transaction inserted into the change log (xmin is the 32-bit transaction id).
_FORGET_OWN_CHANGES = """
DELETE FROM raw.readings_change_log
WHERE xmin::text = (pg_current_xact_id()::text::bigint % 4294967296)::text
"""


# --------------------------------------------------------------------------------------
# Raw events and diagnostics: released once their daily assets ran for the day
# --------------------------------------------------------------------------------------


def raw_by_materialized_days(
    engine: sa.Engine,
    table: str,
    time_column: str,
    days_kept: int,
    today: date,
    zone: ZoneInfo,
    materialized: Callable[[], set[date]],
    consumers: str,
    dry_run: bool,
    batch_rows: int,
    id_column: str | None = None,
) -> TableResult:
    """Delete whole local days of ``table`` past ``days_kept`` whose consumers
    (``materialized()``: the days every consuming asset has materialized) have run;
    with ``id_column``, the deleted ids leave the repeated-id ledger too."""
    cutoff = today - timedelta(days=days_kept)
    result = TableResult(cutoff=str(cutoff))
    raw = _Raw(statements.quote_ident(table), statements.quote_ident(time_column), "", "", "")
    with engine.connect() as conn:
        candidates = _candidate_days(conn, raw, cutoff, zone)
    if not candidates:
        return result
    done = materialized()
    with engine.connect() as conn:
        already = released_days(conn, table, candidates)
    for day in candidates:
        if day in already:
            result.days_kept[str(day)] = "rows arrived after the day was released: kept"
            continue
        if day not in done:
            result.days_kept[str(day)] = f"not yet: {consumers} not materialized for {day}"
            continue
        with engine.connect() as conn:  # one transaction per day
            if dry_run:
                n = _day_rows(conn, raw, day, zone)
            elif id_column and _has_ledger(conn):
                n, forgotten = _delete_day_and_forget_ids(
                    conn, raw, table, id_column, day, zone, batch_rows
                )
                result.ids_forgotten += forgotten
                _record_release(conn, table, day, n, "delete")
                conn.commit()
            else:
                n = _delete_day(conn, raw, day, zone, batch_rows)
                _record_release(conn, table, day, n, "delete")
                conn.commit()
        result.rows += n
    return result


# --------------------------------------------------------------------------------------
# Derived tables: by age
# --------------------------------------------------------------------------------------


def _policy_field(setting: str) -> str:
    """The Policy field of a retention setting (retention_hourly_days -> hourly_days)."""
    field = setting.removeprefix("retention_")
    if field not in Policy.__dataclass_fields__:
        raise ValueError(f"retention setting {setting!r} has no Policy field {field!r}")
    return field


def _level_tables() -> list[tuple[str, str, bool, str]]:
    """The hierarchy's aged levels (raw has its own rules above), each followed by the
    table of its medians when they live apart: kept exactly as long as the level."""
    out = []
    for level in hierarchy.DERIVED:
        if level.retention_setting is None:
            continue
        field = _policy_field(level.retention_setting)
        out.append((level.table, level.bucket_column, level.key_is_date, field))
        if level.median_table:
            out.append((level.median_table, level.bucket_column, level.key_is_date, field))
    return out


# (table, key column, key is a local date, Policy field)
AGED_TABLES: tuple[tuple[str, str, bool, str], ...] = (
    *_level_tables(),
    ("bi.device_metrics_hourly", "hour_start", False, "device_metrics_days"),
    ("bi.diagnostic_summary_daily", "metric_date", True, "diagnostic_summary_days"),
    ("bi.pattern_time_based_daily", "day", True, "patterns_days"),
    ("bi.pattern_co_occurrence_daily", "day", True, "patterns_days"),
    ("bi.pattern_sequence_daily", "day", True, "patterns_days"),
    ("bi.pattern_room_based_daily", "day", True, "patterns_days"),
    ("bi.pattern_duration_daily", "day", True, "patterns_days"),
    ("bi.pattern_anomaly_daily", "day", True, "patterns_days"),
)


def aged_table(
    engine: sa.Engine,
    table: str,
    key: str,
    key_is_date: bool,
    days_kept: int,
    today: date,
    zone: ZoneInfo,
    dry_run: bool,
    batch_rows: int,
) -> TableResult:
    """Delete rows whose key is older than ``days_kept`` days (0: keep forever), by key
    range in bounded slices: one short transaction per slice."""
    if days_kept == 0:
        return TableResult(cutoff="never", skipped="kept forever (retention 0)")
    cutoff_day = today - timedelta(days=days_kept)
    cutoff: date | datetime = cutoff_day if key_is_date else _day_start(cutoff_day, zone)
    result = TableResult(cutoff=str(cutoff))
    t, k = statements.quote_ident(table), statements.quote_ident(key)
    with engine.connect() as conn:
        oldest = conn.execute(sa.text(f"SELECT min({k}) FROM {t} WHERE {k} < :c"), {"c": cutoff})
        oldest = oldest.scalar_one()
        if oldest is None:
            return result
        if dry_run:
            result.rows = conn.execute(
                sa.text(f"SELECT count(*) FROM {t} WHERE {k} < :c"), {"c": cutoff}
            ).scalar_one()
            return result
    # Slices of one day (derived tables are small per day), oldest first.
    lo = oldest
    step = timedelta(days=1)
    while lo < cutoff:
        hi = min(lo + step, cutoff)
        with engine.begin() as conn:
            result.rows += conn.execute(
                sa.text(f"DELETE FROM {t} WHERE {k} >= :lo AND {k} < :hi"), {"lo": lo, "hi": hi}
            ).rowcount
        lo = hi
    return result


def orphaned_staging(engine: sa.Engine, hours: int, dry_run: bool) -> TableResult:
    """Rows of ``ops.staging_*`` tables older than ``hours`` (left by killed runs: a live
    run's staging rows are minutes old and its own to delete)."""
    result = TableResult(cutoff=f"{hours} hours ago")
    with engine.begin() as conn:
        names = conn.execute(
            sa.text(
                "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'ops' "
                "AND tablename LIKE 'staging\\_%'"
            )
        ).scalars()
        for name in list(names):
            where = "staged_at < now() - make_interval(hours => :h)"
            params = {"h": hours}
            has_column = conn.execute(
                sa.text(
                    "SELECT EXISTS (SELECT 1 FROM information_schema.columns "
                    "WHERE table_schema = 'ops' AND quote_ident(table_name) = :n "
                    "AND column_name = 'staged_at')"
                ),
                {"n": name},
            ).scalar_one()
            if not has_column:
                continue
            sql = "SELECT count(*)" if dry_run else "DELETE"
            res = conn.execute(sa.text(f"{sql} FROM ops.{name} WHERE {where}"), params)
            result.rows += res.scalar_one() if dry_run else res.rowcount
    return result


# --------------------------------------------------------------------------------------
# One cleanup: everything past its retention, in order
# --------------------------------------------------------------------------------------

# Raw tables released by day once every asset consuming the day has materialized it:
# (table, consuming assets, Policy field).
CONSUMED_TABLES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "raw.events",
        (
            "pattern_time_based_daily",
            "pattern_co_occurrence_daily",
            "pattern_sequence_daily",
            "pattern_room_based_daily",
            "pattern_duration_daily",
            "pattern_anomaly_daily",
        ),
        "events_days",
    ),
    ("raw.diagnostics", ("diagnostic_summary_daily",), "raw_diagnostics_days"),
)


def cleanup(
    engine: sa.Engine,
    catalogue: Catalogue,
    settings: Settings,
    policy: Policy,
    today: date,
    dry_run: bool,
    origin: datetime,
    bands: Callable[[sa.Connection, list[date]], Iterable[tuple[date, str]]],
    materialized: Callable[[tuple[str, ...]], set[date]],
    event_raw: Mapping[str, tuple[str, Callable[[], set[date]]]] | None = None,
    event_hourly: Sequence[tuple[str, str]] = (),
    event_ids: Mapping[str, str] | None = None,
) -> dict[str, TableResult]:
    """Apply ``policy``: raw readings (safe days only), the consumed raw tables, the raw
    event tables, the derived tables by age, orphaned staging rows; the result per table,
    in that order.

    ``bands`` gives the (day, field) condition bands of days (the writers' rule);
    ``materialized(assets)`` the days every one of ``assets`` has materialized;
    ``event_raw`` per raw event table its time column and the days every event rollup
    level over it has materialized (``analytics_raw_days``); ``event_hourly`` the hourly
    event rollup tables and their key (``analytics_hourly_days``); ``event_ids`` the id
    column of the raw event tables that have one (their released ids leave the ledger).
    """
    zone = settings.zone
    results: dict[str, TableResult] = {}
    if not catalogue.raw_in_postgres:
        # Raw points in InfluxDB expire by the bucket's own retention rule.
        results["raw"] = TableResult(
            cutoff="bucket",
            skipped=f"raw readings live in {catalogue.source.describe()}: "
            "the bucket's retention rule applies",
        )
    else:
        results[catalogue.source.table] = raw_readings(
            engine, catalogue, settings, policy, today, dry_run, bands, origin
        )
    for table, assets, field_name in CONSUMED_TABLES:
        results[table] = raw_by_materialized_days(
            engine,
            table,
            "time",
            getattr(policy, field_name),
            today,
            zone,
            lambda assets=assets: materialized(assets),
            " / ".join(assets),
            dry_run,
            policy.batch_rows,
        )
    for table, (time_column, rolled_up) in (event_raw or {}).items():
        results[table] = raw_by_materialized_days(
            engine,
            table,
            time_column,
            policy.analytics_raw_days,
            today,
            zone,
            rolled_up,
            "every event rollup level over it",
            dry_run,
            policy.batch_rows,
            (event_ids or {}).get(table),
        )
    for table, key in event_hourly:
        results[table] = aged_table(
            engine,
            table,
            key,
            False,
            policy.analytics_hourly_days,
            today,
            zone,
            dry_run,
            policy.batch_rows,
        )
    for table, key, key_is_date, field_name in AGED_TABLES:
        results[table] = aged_table(
            engine,
            table,
            key,
            key_is_date,
            getattr(policy, field_name),
            today,
            zone,
            dry_run,
            policy.batch_rows,
        )
    results["ops.staging_*"] = orphaned_staging(engine, policy.staging_hours, dry_run)
    return results
