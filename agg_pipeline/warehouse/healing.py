"""Self-healing: every partition in the lookback ends equal to what its parents hold now.

One sensor, ``self_healing_sensor``, owns every correction and every catch-up (the
schedules keep the regular cadence). Each tick it:

1. records raw changes as raw-hour versions (drains the late-data change log, or compares
   InfluxDB fingerprints; PostgreSQL hours holding readings but no version yet - history
   written before the trigger existed - are probed once each);
2. computes, set-based from ``ops.partition_versions`` (``versions.py``), the **stale**
   partitions in the lookback: a parent's version is above the version the child was
   computed from, or the child is missing while a parent holds data and its schedule is
   past due (a first fill, or a daemon / schedule that was down);
3. requests only partitions whose every parent is neither stale, nor requested in this
   tick, nor in a queued or running run (read from the instance) - lowest level first.
   A run covers one partitions definition (hourly, daily, weekly): it takes the stale
   assets of a partition plus their descendants of the same grain (executed in
   dependency order inside the run), and contiguous partitions with the same assets go
   into one multi-partition run (a Dagster run costs ~2.5 s).

So a level above is requested only after the level below is current, and a parent that
changes while its child runs leaves the child stale (versions, not timestamps): it runs
again on a later tick. Decisions are a function of the warehouse and the instance only
(no cursor), so a restarted daemon picks up exactly where things stand.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from agg_pipeline.config.settings import Settings
from agg_pipeline.core import hierarchy
from agg_pipeline.warehouse import versions

RAW = versions.RAW
GRAINS = ("hourly", "daily", "weekly")  # run groups, lowest level first


@dataclass(frozen=True)
class Node:
    asset: str
    grain: str
    parents: tuple[str, ...]
    switch: str | None = None  # settings flag: off = no first fill (its feature is off)


# Every healed edge of the asset graph (test_self_healing checks it against the graph):
# the hierarchy's levels, then the assets beside it; lowest grain first (stable).
NODES: tuple[Node, ...] = tuple(
    sorted(
        (
            *(
                Node(lv.asset, lv.grain.value, hierarchy.upstream_assets(lv), lv.schedule_setting)
                for lv in hierarchy.DERIVED
            ),
            Node(
                "device_performance_hourly",
                "hourly",
                ("rollup_hourly", "readings_1m"),
                "schedule_rollup_hourly",
            ),
            Node("conditions_daily", "daily", (RAW,), "schedule_conditions_daily"),
        ),
        key=lambda node: GRAINS.index(node.grain),
    )
)
BY_ASSET = {n.asset: n for n in NODES}
GRAIN_OF = {RAW: "hourly", **{n.asset: n.grain for n in NODES}}

# A missing partition is filled once its schedule should have produced it (:05, 01:30,
# Monday 02:00) plus a grace: the healer never races a healthy schedule, and takes over
# when the daemon or the schedule was down.
DUE = {
    "hourly": timedelta(minutes=15),
    "daily": timedelta(hours=1, minutes=45),
    "weekly": timedelta(hours=2, minutes=15),
}

Partition = tuple[str, datetime]  # (asset, partition start)


@dataclass(frozen=True)
class Stale:
    asset: str
    start: datetime
    reason: str  # "missing" | "parent changed"


@dataclass(frozen=True)
class Request:
    grain: str
    assets: tuple[str, ...]
    first: datetime  # first partition start
    last: datetime  # last partition start (inclusive)
    partitions: int
    reasons: tuple[str, ...]


@dataclass
class Plan:
    stale: list[Stale] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    held: list[Stale] = field(default_factory=list)  # stale, waiting for a parent


# --------------------------------------------------------------------------------------
# Partitions on each grain
# --------------------------------------------------------------------------------------


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone)


def end_of(grain: str, start: datetime, zone: ZoneInfo) -> datetime:
    if grain == "hourly":
        return start + timedelta(hours=1)
    days = 1 if grain == "daily" else 7
    return _midnight(start.astimezone(zone).date() + timedelta(days=days), zone)


def partitions_between(
    grain: str, lo: datetime, hi: datetime, origin: datetime, zone: ZoneInfo
) -> list[datetime]:
    """Starts of the ``grain`` partitions (at or after ``origin``) overlapping [lo, hi)."""
    out: list[datetime] = []
    if grain == "hourly":
        t = origin + timedelta(hours=max(0, (lo - origin) // timedelta(hours=1)))
        while t < hi:
            out.append(t)
            t += timedelta(hours=1)
        return out
    day = max(lo, origin).astimezone(zone).date()
    if grain == "weekly":
        day -= timedelta(days=day.weekday())
    step = timedelta(days=1 if grain == "daily" else 7)
    while _midnight(day, zone) < hi:
        start = _midnight(day, zone)
        if end_of(grain, start, zone) > lo and start >= origin - timedelta(days=6):
            out.append(start)
        day += step
    return out


# --------------------------------------------------------------------------------------
# Staleness
# --------------------------------------------------------------------------------------


class Versions:
    """The version rows in and around the lookback, indexed for range maxima."""

    def __init__(self, rows: Iterable[tuple[str, datetime, int, int | None]]):
        self.rows: dict[Partition, tuple[int, int | None]] = {}
        by_asset: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
        for asset, start, version, computed_from in rows:
            self.rows[(asset, start)] = (int(version), computed_from)
            by_asset[asset].append((start, int(version)))
        self._starts = {a: [s for s, _ in sorted(v)] for a, v in by_asset.items()}
        self._versions = {a: [x for _, x in sorted(v)] for a, v in by_asset.items()}

    def max_in(self, asset: str, lo: datetime, hi: datetime) -> int | None:
        starts = self._starts.get(asset, [])
        i, j = bisect.bisect_left(starts, lo), bisect.bisect_left(starts, hi)
        return max(self._versions[asset][i:j]) if j > i else None

    @classmethod
    def load(cls, conn: sa.Connection, since: datetime) -> Versions:
        rows = conn.execute(
            sa.text(
                "SELECT asset, partition_start, version, computed_from "
                "FROM ops.partition_versions WHERE partition_start >= :lo"
            ),
            {"lo": since - timedelta(days=8)},  # whole weeks around the lookback
        ).all()
        return cls(rows)


def window_start(now: datetime, settings: Settings) -> datetime:
    """Where healing looks back to: the lookback, extended to the Monday that starts its
    first week, so every partition of every grain that overlaps it is healed whole (a day
    is never rebuilt from hours of which half were out of reach)."""
    zone = settings.zone
    day = (now - timedelta(days=settings.late_data_lookback_days)).astimezone(zone).date()
    return _midnight(day - timedelta(days=day.weekday()), zone)


def find_stale(vs: Versions, now: datetime, settings: Settings, origin: datetime) -> list[Stale]:
    """Stale partitions of every healed asset in the lookback, lowest level first.

    Only partitions that ended ``settle`` ago (the schedules own the open windows).
    """
    zone = settings.zone
    since = window_start(now, settings)
    settle = timedelta(minutes=settings.late_data_settle_minutes)
    out: list[Stale] = []
    for node in NODES:
        fill = node.switch is None or bool(getattr(settings, node.switch))
        for start in partitions_between(node.grain, since, now, origin, zone):
            end = end_of(node.grain, start, zone)
            if end + settle > now:
                continue
            parent_max = max(
                (v for p in node.parents if (v := vs.max_in(p, start, end)) is not None),
                default=None,
            )
            if parent_max is None:
                continue  # no parent holds data: nothing to compute from
            row = vs.rows.get((node.asset, start))
            if row is None:
                if fill and now >= end + DUE[node.grain]:
                    out.append(Stale(node.asset, start, "missing"))
            elif row[1] is None or parent_max > row[1]:
                out.append(Stale(node.asset, start, "parent changed"))
    return out


# --------------------------------------------------------------------------------------
# Planning the runs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InFlight:
    """A queued or running run: the assets it may write (None: any) over [start, end)."""

    assets: frozenset[str] | None
    start: datetime
    end: datetime

    def covers(self, asset: str, start: datetime, end: datetime) -> bool:
        return (self.assets is None or asset in self.assets) and (
            start < self.end and self.start < end
        )


# Assets one op writes from one pass over raw (daily.py): requested together, as the
# 01:30 schedule does - the second costs little (measured 9.6 s for both vs 8.2 s alone).
TOGETHER = ({"rollup_daily", "conditions_daily"},)


def _descendants_in_grain(assets: set[str], grain: str, settings: Settings) -> set[str]:
    out = set(assets)
    for group in TOGETHER:
        if out & group:
            out |= {a for a in group if getattr(settings, BY_ASSET[a].switch or "", True)}
    changed = True
    while changed:
        changed = False
        for node in NODES:
            if node.grain == grain and node.asset not in out and out & set(node.parents):
                out.add(node.asset)
                changed = True
    return out


def plan(
    vs: Versions,
    now: datetime,
    settings: Settings,
    origin: datetime,
    in_flight: Sequence[InFlight] = (),
) -> Plan:
    zone = settings.zone
    result = Plan(stale=find_stale(vs, now, settings, origin))
    reasons = {(s.asset, s.start): s.reason for s in result.stale}
    # Per asset, the sorted starts of its partitions that are stale or requested.
    marked: dict[str, list[datetime]] = defaultdict(list)
    for s in result.stale:
        marked[s.asset].append(s.start)
    for starts in marked.values():
        starts.sort()

    def busy(asset: str, lo: datetime, hi: datetime, same_run: set[str]) -> bool:
        """A partition of ``asset`` in [lo, hi) is stale, requested or in flight."""
        if asset in same_run:
            return False  # runs before its child, inside the same run
        if any(r.covers(asset, lo, hi) for r in in_flight):
            return True
        starts = marked.get(asset, [])
        i = bisect.bisect_left(starts, lo)
        return i < len(starts) and starts[i] < hi

    for grain in GRAINS:
        chosen: dict[datetime, tuple[str, ...]] = {}
        by_start: dict[datetime, set[str]] = defaultdict(set)
        for s in result.stale:
            if GRAIN_OF[s.asset] == grain:
                by_start[s.start].add(s.asset)
        for start in sorted(by_start):
            end = end_of(grain, start, zone)
            run = _descendants_in_grain(by_start[start], grain, settings)
            blocked = any(r.covers(a, start, end) for a in run for r in in_flight) or any(
                busy(p, start, end, run) for a in run for p in BY_ASSET[a].parents
            )
            if blocked:
                result.held += [
                    Stale(a, start, reasons[(a, start)]) for a in sorted(by_start[start])
                ]
                continue
            ordered = tuple(n.asset for n in NODES if n.asset in run)
            chosen[start] = ordered
        # Contiguous partitions with the same assets: one multi-partition run.
        for start in sorted(chosen):
            assets = chosen[start]
            prev = result.requests[-1] if result.requests else None
            if (
                prev is not None
                and prev.grain == grain
                and prev.assets == assets
                and end_of(grain, prev.last, zone) == start
            ):
                result.requests[-1] = Request(
                    grain,
                    assets,
                    prev.first,
                    start,
                    prev.partitions + 1,
                    tuple(sorted(set(prev.reasons) | _why(assets, start, reasons))),
                )
            else:
                result.requests.append(
                    Request(
                        grain, assets, start, start, 1, tuple(sorted(_why(assets, start, reasons)))
                    )
                )
            for a in assets:
                if (a, start) not in reasons:  # stale ones are marked already
                    bisect.insort(marked[a], start)
    return result


def _whys(assets: Iterable[str], start: datetime, reasons: dict) -> tuple[str, ...]:
    return tuple(sorted(_why(assets, start, reasons)))


def _why(assets: Iterable[str], start: datetime, reasons: dict) -> set[str]:
    return {reasons.get((a, start), "parent rewritten in this run") for a in assets}


# --------------------------------------------------------------------------------------
# Raw hours without a version (history older than the change log)
# --------------------------------------------------------------------------------------


def probe_raw_hours(
    conn: sa.Connection, table: str, time_column: str, lo: datetime, hi: datetime
) -> int:
    """Give a version to every hour in [lo, hi) holding raw rows but no version yet (one
    index probe per such hour); empty hours stay without one. Commit right after."""
    from agg_pipeline.warehouse import statements

    t, c = statements.quote_ident(table), statements.quote_ident(time_column)
    versions.lock(conn)
    return conn.execute(
        sa.text(
            "INSERT INTO ops.partition_versions (asset, partition_start, version) "
            "SELECT :raw, h, nextval('ops.partition_version_seq') "
            "FROM generate_series(CAST(:lo AS timestamptz), CAST(:hi AS timestamptz) "
            "- interval '1 hour', interval '1 hour') AS h "
            "WHERE NOT EXISTS (SELECT 1 FROM ops.partition_versions AS v "
            "                  WHERE v.asset = :raw AND v.partition_start = h) "
            f"AND EXISTS (SELECT 1 FROM {t} AS r "
            f"            WHERE r.{c} >= h AND r.{c} < h + interval '1 hour') "
            "ORDER BY h ON CONFLICT DO NOTHING"
        ),
        {"raw": RAW, "lo": lo, "hi": hi},
    ).rowcount


# --------------------------------------------------------------------------------------
# One tick, as the sensor and `agg-pipeline status` see it
# --------------------------------------------------------------------------------------


def assess(
    engine: sa.Engine,
    now: datetime,
    settings: Settings,
    origin: datetime,
    in_flight: Sequence[InFlight] = (),
    probe: tuple[str, str] | None = None,
) -> Plan:
    """Stale partitions and the runs that fix them next. ``probe``: (raw table, time
    column) to version raw hours that hold readings but have no version yet."""
    since = window_start(now, settings)
    if probe is not None:
        lo = max(origin, origin + timedelta(hours=(since - origin) // timedelta(hours=1)))
        with engine.begin() as conn:
            probe_raw_hours(conn, probe[0], probe[1], lo, now)
    with engine.connect() as conn:
        vs = Versions.load(conn, since)
    return plan(vs, now, settings, origin, in_flight)


# --------------------------------------------------------------------------------------
# Cross-level consistency, as the levels are now (status; independent of the versions)
# --------------------------------------------------------------------------------------

# Each query returns (partition label, sensors that disagree) for settled partitions in
# [:lo, :hi): a level against its parents as they are now, on count sums and min / max.
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
        f"SELECT coalesce(c.b, p.b)::text AS bucket, count(*) AS sensors "
        f"FROM ({child}) AS c FULL JOIN ({parent}) AS p ON p.sensor_id = c.sensor_id AND p.b = c.b "
        "WHERE (c.n, c.mn, c.mx) IS DISTINCT FROM (p.n, p.mn, p.mx) GROUP BY 1 ORDER BY 1"
    )


CONSISTENCY: dict[str, str] = {
    "readings_5m vs readings_1m": _compare(
        "SELECT sensor_id, date_bin('1 hour', window_start, :origin) AS b, sum(sample_count) "
        "AS n, min(min_value) AS mn, max(max_value) AS mx FROM bi.readings_5m "
        "WHERE window_start >= :lo AND window_start < :hi GROUP BY 1, 2",
        _HOUR_OF_1M,
    ),
    "rollup_hourly vs readings_1m": _compare(
        "SELECT sensor_id, hour_start AS b, sample_count AS n, min_value AS mn, max_value AS mx "
        "FROM bi.hourly_sensor_agg WHERE hour_start >= :lo AND hour_start < :hi",
        _HOUR_OF_1M,
    ),
    "rollup_daily vs rollup_hourly": _compare(
        "SELECT sensor_id, metric_date AS b, sample_count AS n, min_value AS mn, "
        "max_value AS mx FROM bi.daily_sensor_agg "
        "WHERE metric_date >= :lo_date AND metric_date < :hi_date",
        _DAY_OF_HOURS,
    ),
    "rollup_weekly vs rollup_daily": _compare(
        "SELECT sensor_id, week_start AS b, sample_count AS n, min_value AS mn, "
        "max_value AS mx FROM bi.weekly_sensor_agg "
        "WHERE week_start >= :lo_week AND week_start < :hi_week",
        _WEEK_OF_DAYS,
    ),
    # The day's valid raw count, from the daily pass over raw (conditions), against the
    # count merged from the hours: they differ when the hours were stale.
    "rollup_daily vs valid raw count (conditions_daily)": (
        "SELECT d.metric_date::text, count(*) FROM bi.daily_sensor_agg AS d "
        "JOIN bi.daily_sensor_conditions AS c "
        "  ON c.sensor_id = d.sensor_id AND c.metric_date = d.metric_date "
        "WHERE d.metric_date >= :lo_date AND d.metric_date < :hi_date "
        "AND d.sample_count <> c.reading_count GROUP BY 1 ORDER BY 1"
    ),
}


def _null_medians_sql(table: str, key: str, lo: str, hi: str, raw: tuple[str, str] | None) -> str:
    """NULL medians that the raw readings could fill (their window still holds raw rows
    and is within the median limit)."""
    from agg_pipeline.warehouse import statements

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
        f"SELECT t.{key}::text, count(*) FROM {table} AS t "
        f"WHERE t.{key} >= :{lo} AND t.{key} < :{hi} AND t.median_value IS NULL "
        f"AND t.sample_count <= :max_readings AND {exists} GROUP BY 1 ORDER BY 1"
    )


def consistency_problems(
    engine: sa.Engine,
    now: datetime,
    settings: Settings,
    origin: datetime,
    raw: tuple[str, str] | None = None,
) -> list[str]:
    """Stale partitions (versions), raw changes not yet observed, levels that disagree
    with their parents, and NULL medians raw could fill - over the settled partitions of
    the healing window. Empty when everything is current and consistent."""
    zone = settings.zone
    since = window_start(now, settings)
    settle = timedelta(minutes=settings.late_data_settle_minutes)
    # Settled windows only: the open hour / day / week are still being written.
    hi = now - settle
    hi_hour = origin + timedelta(hours=max(0, (hi - origin) // timedelta(hours=1)))
    hi_date = hi.astimezone(zone).date()  # days before it have ended
    hi_week = hi_date - timedelta(days=hi_date.weekday())
    lo_date = since.astimezone(zone).date()
    params = {
        "lo": since,
        "hi": hi_hour,
        "origin": origin,
        "tz": settings.timezone,
        "lo_date": lo_date,
        "hi_date": hi_date,
        "hi_day_start": _midnight(hi_date, zone),
        "lo_week": lo_date - timedelta(days=lo_date.weekday()),
        "hi_week": hi_week,
        "max_readings": settings.median_max_readings,
    }
    problems: list[str] = []
    with engine.connect() as conn:
        vs = Versions.load(conn, since)
        pending = conn.execute(
            sa.text(
                "SELECT count(DISTINCT date_bin('1 hour', bucket_start, :origin)) "
                "FROM raw.readings_change_log "
                "WHERE bucket_start + interval '1 hour' + make_interval(secs => :settle) <= :now"
            ),
            {
                "origin": origin,
                "settle": settle.total_seconds(),
                "now": now,
            },
        ).scalar_one()
        if pending:
            problems.append(
                f"{pending} settled raw hour(s) changed, not yet observed: their levels are "
                "stale (is self_healing_sensor running?)"
            )
        for name, sql in CONSISTENCY.items():
            rows = conn.execute(sa.text(sql), params).all()
            if rows:
                problems.append(
                    f"{name}: {len(rows)} partition(s) disagree, e.g. {rows[0][0]} "
                    f"({rows[0][1]} sensor(s))"
                )
        for table, key, lo, hi_key in (
            ("bi.hourly_sensor_agg", "hour_start", "lo", "hi"),
            ("bi.daily_sensor_agg", "metric_date", "lo_date", "hi_date"),
            ("bi.weekly_sensor_agg", "week_start", "lo_week", "hi_week"),
        ):
            rows = conn.execute(
                sa.text(_null_medians_sql(table, key, lo, hi_key, raw)), params
            ).all()
            if rows:
                problems.append(
                    f"{table}: NULL medians that raw readings could fill in {len(rows)} "
                    f"partition(s), e.g. {rows[0][0]} ({rows[0][1]} sensor(s))"
                )
    stale = find_stale(vs, now, settings, origin)
    by_asset: dict[str, list[Stale]] = defaultdict(list)
    for s in stale:
        by_asset[s.asset].append(s)
    for asset, items in by_asset.items():
        first = min(items, key=lambda s: s.start)
        problems.append(
            f"{asset}: {len(items)} stale partition(s) in the healing window, e.g. "
            f"{first.start.isoformat()} ({first.reason})"
        )
    return problems
