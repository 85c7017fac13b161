"""Cross-level consistency: each level against its parents *as they are now*.

One set of queries, used in three places: ``agg-pipeline status`` (over the healing
window, ``healing.consistency_problems``), the ``consistent_with_parents`` asset check
(over the window a run just wrote, ``checks.py``) and the healer's periodic scan
(``healing.scan``). Independent of the data versions: values are compared, so a row
changed behind the pipeline's back is found too.

Each query returns (bucket, sensors that disagree) for [:lo, :hi): hours and 5-minute
windows against their minutes, days against their hours, weeks against their days (count
sums, min and max); a day's count against the day's valid raw count (from the daily pass
over raw, ``conditions_daily``); and NULL medians that the raw readings could fill.
A mismatching partition is *flagged* in ``ops.partition_versions`` (``flag``): stale until
it is rewritten, so the healer recomputes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from agg_pipeline.core.windows import Window
from agg_pipeline.warehouse import statements

_HOUR_OF_1M = (
    "SELECT sensor_id, date_bin('1 hour', window_start, :origin) AS b, sum(sample_count) AS n, "
    "min(min_value) AS mn, max(max_value) AS mx FROM bi.readings_1m "
    "WHERE window_start >= :lo AND window_start < :hi GROUP BY 1, 2"
)
_DAY_OF_HOURS = (
    "SELECT sensor_id, (hour_start AT TIME ZONE :tz)::date AS b, sum(sample_count) AS n, "
    "min(min_value) AS mn, max(max_value) AS mx FROM bi.hourly_sensor_agg "
    "WHERE hour_start >= :lo AND hour_start < :hi_day_start GROUP BY 1, 2"
)
_WEEK_OF_DAYS = (
    "SELECT sensor_id, date_trunc('week', metric_date)::date AS b, sum(sample_count) AS n, "
    "min(min_value) AS mn, max(max_value) AS mx FROM bi.daily_sensor_agg "
    "WHERE metric_date >= :lo_week AND metric_date < :hi_week GROUP BY 1, 2"
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


PAIRS: tuple[Pair, ...] = (
    Pair(
        "readings_5m",
        "readings_5m vs readings_1m",
        _compare(
            "SELECT sensor_id, date_bin('1 hour', window_start, :origin) AS b, sum(sample_count) "
            "AS n, min(min_value) AS mn, max(max_value) AS mx FROM bi.readings_5m "
            "WHERE window_start >= :lo AND window_start < :hi GROUP BY 1, 2",
            _HOUR_OF_1M,
        ),
    ),
    Pair(
        "rollup_hourly",
        "rollup_hourly vs readings_1m",
        _compare(
            "SELECT sensor_id, hour_start AS b, sample_count AS n, min_value AS mn, "
            "max_value AS mx FROM bi.hourly_sensor_agg "
            "WHERE hour_start >= :lo AND hour_start < :hi",
            _HOUR_OF_1M,
        ),
    ),
    Pair(
        "rollup_daily",
        "rollup_daily vs rollup_hourly",
        _compare(
            "SELECT sensor_id, metric_date AS b, sample_count AS n, min_value AS mn, "
            "max_value AS mx FROM bi.daily_sensor_agg "
            "WHERE metric_date >= :lo_date AND metric_date < :hi_date",
            _DAY_OF_HOURS,
        ),
    ),
    Pair(
        "rollup_weekly",
        "rollup_weekly vs rollup_daily",
        _compare(
            "SELECT sensor_id, week_start AS b, sample_count AS n, min_value AS mn, "
            "max_value AS mx FROM bi.weekly_sensor_agg "
            "WHERE week_start >= :lo_week AND week_start < :hi_week",
            _WEEK_OF_DAYS,
        ),
    ),
    # The day's valid raw count, from the daily pass over raw (conditions), against the
    # count merged from the hours: they differ when the hours were stale.
    Pair(
        "rollup_daily",
        "rollup_daily vs valid raw count (conditions_daily)",
        "SELECT d.metric_date, count(*) FROM bi.daily_sensor_agg AS d "
        "JOIN bi.daily_sensor_conditions AS c "
        "  ON c.sensor_id = d.sensor_id AND c.metric_date = d.metric_date "
        "WHERE d.metric_date >= :lo_date AND d.metric_date < :hi_date "
        "AND d.sample_count <> c.reading_count GROUP BY 1 ORDER BY 1",
    ),
)

# (asset, table, key column, lower and upper bound parameters)
MEDIANS: tuple[tuple[str, str, str, str, str], ...] = (
    ("rollup_hourly", "bi.hourly_sensor_agg", "hour_start", "lo", "hi"),
    ("rollup_daily", "bi.daily_sensor_agg", "metric_date", "lo_date", "hi_date"),
    ("rollup_weekly", "bi.weekly_sensor_agg", "week_start", "lo_week", "hi_week"),
)
CHECKED = ("rollup_hourly", "rollup_daily", "rollup_weekly")  # carry the asset check


def null_medians_sql(table: str, key: str, lo: str, hi: str, raw: tuple[str, str] | None) -> str:
    """NULL medians that the raw readings could fill (their window still holds raw rows
    and is within the median limit)."""
    if key == "hour_start":
        span = "t.hour_start, t.hour_start + interval '1 hour'"
    elif key == "metric_date":
        span = (
            "(t.metric_date::timestamp AT TIME ZONE :tz), "
            "((t.metric_date + 1)::timestamp AT TIME ZONE :tz)"
        )
    else:
        span = (
            "(t.week_start::timestamp AT TIME ZONE :tz), "
            "((t.week_start + 7)::timestamp AT TIME ZONE :tz)"
        )
    exists = "true"
    if raw is not None:
        rt, rc = statements.quote_ident(raw[0]), statements.quote_ident(raw[1])
        exists = (
            f"EXISTS (SELECT 1 FROM {rt} AS r, LATERAL (SELECT {span}) AS w (s, e) "
            f"WHERE r.{rc} >= w.s AND r.{rc} < w.e)"
        )
    return (
        f"SELECT t.{key}, count(*) FROM {table} AS t "
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
        "hi_day_start": _midnight(hi_date, zone),
        "lo_week": lo_date - timedelta(days=lo_date.weekday()),
        "hi_week": hi_date - timedelta(days=hi_date.weekday()),
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
    assets: tuple[str, ...] | None = None,
) -> list[Finding]:
    """Every disagreement in ``bounds`` (``params``), of ``assets`` (None: every level)."""
    out: list[Finding] = []
    for pair in PAIRS:
        if assets is None or pair.asset in assets:
            out += [
                Finding(pair.asset, pair.name, b, int(n))
                for b, n in conn.execute(sa.text(pair.sql), bounds)
            ]
    for asset, table, key, lo, hi in MEDIANS:
        if assets is None or asset in assets:
            what = f"{table}: NULL medians that raw readings could fill"
            sql = null_medians_sql(table, key, lo, hi, raw)
            out += [Finding(asset, what, b, int(n)) for b, n in conn.execute(sa.text(sql), bounds)]
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
