"""Cross-level consistency: each level against its parents *as they are now*.

One set of queries, used in three places: ``agg-pipeline status`` (over the healing
window, ``healing.consistency_problems``), the ``consistent_with_parents`` asset check
(over the window a run just wrote, ``checks.py``) and the healer's periodic scan
(``healing.scan``). Independent of the data versions: values are compared, so a row
changed behind the pipeline's back is found too.

Each query returns (partition bucket, sensors that disagree) for [:lo, :hi), and is
derived from ``core/hierarchy.py``, not written per level: every level merged from
another against it per partition (5-minute windows and hours against their minutes, days
against their hours, weeks and months against their days: count sums, min and max); a
day's count against the day's valid raw count (from the daily pass over raw,
``conditions_daily``); and NULL medians that the raw readings could fill.
A mismatching partition is *flagged* in ``ops.partition_versions`` (``flag``): stale until
it is rewritten, so the healer recomputes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from agg_pipeline.config.settings import Settings
from agg_pipeline.core import hierarchy
from agg_pipeline.core.hierarchy import Bucket, Grain, Level, Median
from agg_pipeline.core.windows import Window
from agg_pipeline.warehouse import levels, statements

# Per bucket kind: the bounds parameters of a level's keys (``params``).
_KEY_BOUNDS = {
    Bucket.FIXED: ("lo", "hi"),
    Bucket.LOCAL_DAY: ("lo_date", "hi_date"),
    Bucket.WEEK: ("lo_week", "hi_week"),
    Bucket.MONTH: ("lo_month", "hi_month"),
}
# A date-keyed bucket's length (its end, for the raw readings a NULL median could use).
_DATE_SPAN = {Bucket.LOCAL_DAY: "1 day", Bucket.WEEK: "7 days", Bucket.MONTH: "1 month"}


def _partition_of(level: Level, parent: Level | None, column: str) -> str:
    """The start of ``level``'s partition holding a key ``column`` of ``parent`` (None:
    of ``level`` itself): the bucket a finding names and the healer flags."""
    if level.grain is Grain.HOURLY:
        return f"date_bin('1 hour', {column}, :origin)"
    if level.bucket is Bucket.FIXED:
        raise ValueError(f"level {level.key!r}: fixed buckets need hourly partitions")
    return column if parent is None else levels.bucket_sql(level, column)


def _parent_bounds(level: Level, parent: Level) -> tuple[str, str]:
    """Bounds, in ``parent``'s keys, of exactly the parent rows of ``level``'s buckets."""
    if parent.key_is_date:
        if not level.key_is_date:
            raise ValueError(f"level {level.key!r}: a fixed level over a date-keyed parent")
        return _KEY_BOUNDS[level.bucket]
    if level.bucket is Bucket.FIXED:
        return "lo", "hi"
    if level.bucket is Bucket.LOCAL_DAY:
        return "lo_day_start", "hi_day_start"
    raise ValueError(f"level {level.key!r}: no consistency check of {level.bucket} over hours")


def _sums(level: Level, parent: Level | None) -> str:
    """(sensor_id, partition bucket b, n, mn, mx) of ``parent``'s rows (None: ``level``'s
    own) per partition of ``level``."""
    of = parent or level
    key = statements.quote_ident(of.bucket_column)
    lo, hi = _KEY_BOUNDS[level.bucket] if parent is None else _parent_bounds(level, parent)
    # A level without imported history is merged from its parent's computed rows only.
    computed = (
        " AND origin = 'computed'"
        if parent is not None and parent.imported_history and not level.imported_history
        else ""
    )
    return (
        f"SELECT sensor_id, {_partition_of(level, parent, key)} AS b, sum(sample_count) AS n, "
        f"min(min_value) AS mn, max(max_value) AS mx FROM {statements.quote_ident(of.table)} "
        f"WHERE {key} >= :{lo} AND {key} < :{hi}{computed} GROUP BY 1, 2"
    )


def _compare(child: str, parent: str) -> str:
    """Buckets where the child's (count, min, max) differs from the parent's (or one side
    is missing)."""
    return (
        f"SELECT coalesce(c.b, p.b) AS bucket, count(*) AS sensors "
        f"FROM ({child}) AS c FULL JOIN ({parent}) AS p ON p.sensor_id = c.sensor_id AND p.b = c.b "
        "WHERE (c.n, c.mn, c.mx) IS DISTINCT FROM (p.n, p.mn, p.mx) GROUP BY 1 ORDER BY 1"
    )


@dataclass(frozen=True)
class Pair:
    asset: str  # the level judged (flagged when it disagrees)
    name: str
    sql: str


def _pairs() -> tuple[Pair, ...]:
    """Every level merged from another level against it, per partition; and the level
    carrying the daily conditions against the day's valid raw count."""
    out = []
    for level in hierarchy.DERIVED:
        parent = hierarchy.parent_of(level)
        if parent is hierarchy.RAW:
            continue  # staged from raw: its counts are the raw pass's own
        out.append(
            Pair(
                level.asset,
                f"{level.asset} vs {parent.asset}",
                _compare(_sums(level, None), _sums(level, parent)),
            )
        )
        if level.with_conditions:
            # The day's valid raw count, from the daily pass over raw (conditions), against
            # the count merged from the hours: they differ when the hours were stale.
            t, k = statements.quote_ident(level.table), statements.quote_ident(level.bucket_column)
            lo, hi = _KEY_BOUNDS[level.bucket]
            out.append(
                Pair(
                    level.asset,
                    f"{level.asset} vs valid raw count (conditions_daily)",
                    f"SELECT d.{k}, count(*) FROM {t} AS d "
                    "JOIN bi.daily_sensor_conditions AS c "
                    f"  ON c.sensor_id = d.sensor_id AND c.metric_date = d.{k} "
                    f"WHERE d.{k} >= :{lo} AND d.{k} < :{hi} "
                    "AND d.sample_count <> c.reading_count GROUP BY 1 ORDER BY 1",
                )
            )
    return tuple(out)


PAIRS: tuple[Pair, ...] = _pairs()
# The levels with a median (NULL medians the raw readings could fill are findings).
MEDIAN_LEVELS: tuple[Level, ...] = tuple(
    lv for lv in hierarchy.DERIVED if lv.median is not Median.NONE
)
# The levels that carry the ``consistent_with_parents`` asset check: every level with a
# pair or a median, but those written while their window is still open (1m, 5m: judged
# by the healer's scan and ``status`` once settled, not after every few-minute run).
CHECKED: tuple[str, ...] = tuple(
    lv.asset
    for lv in hierarchy.DERIVED
    if not lv.closed_windows_only
    and (lv in MEDIAN_LEVELS or any(p.asset == lv.asset for p in PAIRS))
)


def medians_on(level: Level, settings: Settings) -> bool:
    """``level``'s median is computed (not switched off by its ``median_setting``)."""
    return level.median_setting is None or bool(getattr(settings, level.median_setting))


def null_medians_sql(level: Level, raw: tuple[str, str] | None) -> str:
    """NULL medians that the raw readings could fill (their window still holds raw rows
    and is within the median limit), per partition of ``level``."""
    key = statements.quote_ident(level.bucket_column)
    if level.bucket is Bucket.FIXED:
        assert level.step is not None
        span = f"t.{key}, t.{key} + interval '{levels.interval_literal(level.step)}'"
    else:
        span = (
            f"(t.{key}::timestamp AT TIME ZONE :tz), "
            f"((t.{key} + interval '{_DATE_SPAN[level.bucket]}')::timestamp AT TIME ZONE :tz)"
        )
    exists = "true"
    if raw is not None:
        rt, rc = statements.quote_ident(raw[0]), statements.quote_ident(raw[1])
        exists = (
            f"EXISTS (SELECT 1 FROM {rt} AS r, LATERAL (SELECT {span}) AS w (s, e) "
            f"WHERE r.{rc} >= w.s AND r.{rc} < w.e)"
        )
    lo, hi = _KEY_BOUNDS[level.bucket]
    return (
        f"SELECT {_partition_of(level, None, f't.{key}')}, count(*) "
        f"FROM {statements.quote_ident(level.table)} AS t "
        f"WHERE t.{key} >= :{lo} AND t.{key} < :{hi} AND t.median_value IS NULL "
        f"AND t.sample_count <= :max_readings AND {exists} GROUP BY 1 ORDER BY 1"
    )


def params(
    lo: datetime, hi: datetime, origin: datetime, zone: ZoneInfo, tz: str, max_readings: int
) -> dict:
    """Bounds for every query over [lo, hi) (whole hours; days and weeks that lie in it)."""
    lo_date, hi_date = lo.astimezone(zone).date(), hi.astimezone(zone).date()
    return {
        "lo": lo,
        "hi": hi,
        "origin": origin,
        "tz": tz,
        "lo_date": lo_date,
        "hi_date": hi_date,
        "lo_day_start": _midnight(lo_date, zone),
        "hi_day_start": _midnight(hi_date, zone),
        "lo_week": lo_date - timedelta(days=lo_date.weekday()),
        "hi_week": hi_date - timedelta(days=hi_date.weekday()),
        "lo_month": lo_date.replace(day=1),
        "hi_month": hi_date.replace(day=1),
        "max_readings": max_readings,
    }


@dataclass(frozen=True)
class Finding:
    asset: str
    what: str  # the pair's name, or "<table>: NULL medians that raw readings could fill"
    bucket: datetime | date
    sensors: int

    def start(self, zone: ZoneInfo) -> datetime:
        """The start of the flagged partition of ``asset``."""
        if isinstance(self.bucket, datetime):
            return self.bucket
        return _midnight(self.bucket, zone)


def find(
    conn: sa.Connection,
    bounds: dict,
    raw: tuple[str, str] | None,
    settings: Settings,
    assets: tuple[str, ...] | None = None,
) -> list[Finding]:
    """Every disagreement in ``bounds`` (``params``), of ``assets`` (None: every level);
    NULL medians only of levels whose median is on (``settings``)."""
    out: list[Finding] = []
    for pair in PAIRS:
        if assets is None or pair.asset in assets:
            out += [
                Finding(pair.asset, pair.name, b, int(n))
                for b, n in conn.execute(sa.text(pair.sql), bounds)
            ]
    for level in MEDIAN_LEVELS:
        if (assets is None or level.asset in assets) and medians_on(level, settings):
            what = f"{level.table}: NULL medians that raw readings could fill"
            sql = null_medians_sql(level, raw)
            out += [
                Finding(level.asset, what, b, int(n)) for b, n in conn.execute(sa.text(sql), bounds)
            ]
    return out


def flag(conn: sa.Connection, asset: str, starts: list[datetime]) -> int:
    """Mark the partitions' current writes inconsistent: stale until rewritten. A write
    flagged again counts one more inconsistent run (the healer stops retrying after
    ``healing.MAX_INCONSISTENT_RUNS``)."""
    if not starts:
        return 0
    return conn.execute(
        sa.text(
            "UPDATE ops.partition_versions SET inconsistent_runs = inconsistent_runs + "
            "CASE WHEN inconsistent_version IS DISTINCT FROM version THEN 1 ELSE 0 END, "
            "inconsistent_version = version "
            "WHERE asset = :a AND partition_start = ANY (CAST(:s AS timestamptz[]))"
        ),
        {"a": asset, "s": sorted(set(starts))},
    ).rowcount


def clear(conn: sa.Connection, asset: str, window: Window, keep: list[datetime]) -> None:
    """The partitions in ``window`` (but ``keep``) agree with their parents: no longer
    flagged."""
    conn.execute(
        sa.text(
            "UPDATE ops.partition_versions SET inconsistent_version = NULL, "
            "inconsistent_runs = 0 WHERE asset = :a AND partition_start >= :s "
            "AND partition_start < :e AND (inconsistent_version IS NOT NULL "
            "OR inconsistent_runs <> 0) "
            "AND NOT partition_start = ANY (CAST(:keep AS timestamptz[]))"
        ),
        {"a": asset, "s": window.start, "e": window.end, "keep": sorted(set(keep))},
    )


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone)
