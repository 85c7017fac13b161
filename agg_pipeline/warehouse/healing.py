"""Self-healing: every partition in the lookback ends equal to what its parents hold now.

One sensor, ``self_healing_sensor``, owns every correction and every catch-up (the
schedules keep the regular cadence). Each tick it:

1. records raw changes as raw-hour versions (drains the late-data change log, or compares
   InfluxDB fingerprints; raw events and diagnostics: their change log, sql/018; the event
   rollups' raw tables: the same log, sql/021 (their nodes: ``Graph.with_nodes``); source
   hours holding rows but no version yet - history written before the trigger existed -
   are probed once each);
2. computes, set-based from ``ops.partition_versions`` (``versions.py``), the **stale**
   partitions in the lookback: a parent's version is above the version the child was
   computed from, or the child is missing while a parent holds data and its schedule is
   past due (a first fill, or a daemon / schedule that was down);
3. requests only partitions whose every parent is neither stale, nor requested in this
   tick, nor in a queued or running run (read from the instance) - lowest level first.
   A run covers one partitions definition (hourly, daily, weekly, monthly): it takes the stale
   assets of a partition plus their descendants of the same grain (executed in
   dependency order inside the run), and contiguous partitions with the same assets go
   into one multi-partition run (a Dagster run costs ~2.5 s).

Two verdicts of the checks feed in too (columns of ``ops.partition_versions``, sql/018):
a partition found inconsistent with its parents as they are now (the
``consistent_with_parents`` check after a write, or this sensor's periodic ``scan``) is
stale until rewritten (at most ``MAX_INCONSISTENT_RUNS`` times in a row, then held and
reported); a partition whose latest write failed a blocking check holds its children.

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

from agg_pipeline.config import events as events_spec
from agg_pipeline.config.events import EventsCatalogue, RollupLevel
from agg_pipeline.config.settings import Settings
from agg_pipeline.core import hierarchy
from agg_pipeline.warehouse import consistency, versions

RAW = versions.RAW
SOURCES = (RAW, "raw_events", "raw_diagnostics")  # versioned by the hour, never written here
# Run groups, lowest level first: one run covers one group (one job, one partitions
# definition); the daily grain has three independent families.
# The event rollups (Graph.with_nodes) run per grain in their own jobs, after the others.
EVENT_GROUPS = ("events_hourly", "events_daily", "events_weekly", "events_monthly")
GROUPS = ("hourly", "daily", "diagnostics", "patterns", "weekly", "monthly", *EVENT_GROUPS)
GROUP_GRAIN = {
    "diagnostics": "daily",
    "patterns": "daily",
    **{g: g.removeprefix("events_") for g in EVENT_GROUPS},
}
# A partition found inconsistent with its parents is recomputed at most this many times
# in a row; then it is reported (status, held) instead of being recomputed in a loop.
MAX_INCONSISTENT_RUNS = 3
STUCK = "inconsistent after"  # reason prefix of such a partition


@dataclass(frozen=True)
class Node:
    asset: str
    grain: str
    parents: tuple[str, ...]
    # Settings flag(s): all off = no first fill (its feature is off).
    switch: str | tuple[str, ...] | None = None
    group: str | None = None  # run group (GROUPS); None: the grain's
    # The parents' partitions read reach back this many days before the child's (the
    # anomaly baseline's partition mapping; the detectors' state carried into the day).
    days_before: int = 0

    @property
    def run_group(self) -> str:
        return self.group or self.grain

    def switched_on(self, settings: Settings) -> bool:
        if self.switch is None:
            return True
        names = (self.switch,) if isinstance(self.switch, str) else self.switch
        return any(bool(getattr(settings, n)) for n in names)


# pattern_*_daily read each entity's last event up to this many days before the day (its
# state at midnight, assets/patterns.load_day): a change there changes the day.
PATTERN_CARRY_DAYS = 7
PATTERN_BASELINE_DAYS = 14  # pattern_anomaly_daily's partition mapping (assets/patterns.py)
_PATTERN_DETECTORS = ("time_based", "co_occurrence", "sequence", "room_based", "duration")


# Every healed edge of the asset graph (test_self_healing checks it against the graph):
# the hierarchy's levels, the assets beside it, then the other sources' families; lowest
# run group first (stable).
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
            # The daily_rollup job's third asset, from its own source (the 01:30 schedule).
            Node(
                "diagnostic_summary_daily",
                "daily",
                ("raw_diagnostics",),
                ("schedule_rollup_daily", "schedule_conditions_daily"),
                group="diagnostics",
            ),
            *(
                Node(
                    f"pattern_{name}_daily",
                    "daily",
                    ("raw_events",),
                    "schedule_patterns",
                    group="patterns",
                    days_before=PATTERN_CARRY_DAYS,
                )
                for name in _PATTERN_DETECTORS
            ),
            Node(
                "pattern_anomaly_daily",
                "daily",
                ("pattern_time_based_daily",),
                "schedule_patterns",
                group="patterns",
                days_before=PATTERN_BASELINE_DAYS,
            ),
        ),
        key=lambda node: GROUPS.index(node.run_group),
    )
)


@dataclass(frozen=True, eq=False)
class Graph:
    """What the healer heals: its nodes (lowest run group first) and their source assets
    (versioned by the hour, never written here). ``BASE`` holds the hierarchy's levels and
    the fixed families; the definitions add the event rollups their catalogue declares
    (``with_nodes``, defs/events/levels.py) and pass that graph to ``assess``,
    ``find_stale``, ``plan`` and ``consistency_problems``: no module state is changed."""

    nodes: tuple[Node, ...]
    sources: tuple[str, ...]
    by_asset: dict[str, Node] = field(init=False)
    grain_of: dict[str, str] = field(init=False)  # sources are versioned by the hour
    group_of: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_asset", {n.asset: n for n in self.nodes})
        grains = {**{s: "hourly" for s in self.sources}, **{n.asset: n.grain for n in self.nodes}}
        object.__setattr__(self, "grain_of", grains)
        object.__setattr__(self, "group_of", {n.asset: n.run_group for n in self.nodes})

    def with_nodes(self, nodes: Iterable[Node], sources: Iterable[str]) -> Graph:
        """This graph and ``nodes`` (those not healed yet) over ``sources`` too."""
        new = [n for n in nodes if n.asset not in self.by_asset]
        ordered = sorted((*self.nodes, *new), key=lambda node: GROUPS.index(node.run_group))
        extra = tuple(s for s in sources if s not in self.sources)
        return Graph(tuple(ordered), (*self.sources, *extra))

    def reach_days(self) -> int:
        """Days before the lookback whose versions a plan reads: whole weeks (and months,
        when a monthly level is healed), and the parents' reach."""
        month = 31 if any(n.grain == "monthly" for n in self.nodes) else 0
        return max(8, month) + max(n.days_before for n in self.nodes)


BASE = Graph(NODES, SOURCES)
BY_ASSET = BASE.by_asset  # the fixed nodes (the event rollups': their graph's by_asset)
GRAIN_OF = BASE.grain_of
GROUP_OF = BASE.group_of


def event_nodes(levels: Iterable[RollupLevel], catalogue: EventsCatalogue) -> tuple[Node, ...]:
    """A node per event rollup level the catalogue declares: every grain is computed from
    its raw event table (exact at every level), in its grain's job, switched by its
    grain's schedule setting."""
    return tuple(
        Node(
            lv.asset,
            lv.grain.value,
            (events_spec.source_asset(catalogue, lv.spec.source),),
            f"schedule_events_{lv.grain.value}",
            group=f"events_{lv.grain.value}",
        )
        for lv in levels
    )


# A missing partition is filled once its schedule should have produced it (:05, 01:30,
# Monday 02:00) plus a grace: the healer never races a healthy schedule, and takes over
# when the daemon or the schedule was down.
DUE = {
    "hourly": timedelta(minutes=15),
    # The event rollups' schedules (defs/events/assets.py): :05, 01:00, Monday 02:00, the
    # 1st at 03:00 - each plus the same 10-15 minutes' grace.
    "events_hourly": timedelta(minutes=15),
    "events_daily": timedelta(hours=1, minutes=15),
    "events_weekly": timedelta(hours=2, minutes=15),
    "events_monthly": timedelta(hours=3, minutes=15),
    "daily": timedelta(hours=1, minutes=45),
    "diagnostics": timedelta(hours=1, minutes=45),
    "patterns": timedelta(hours=2, minutes=15),  # the 01:45 schedule
    "weekly": timedelta(hours=2, minutes=15),
    "monthly": timedelta(hours=3, minutes=45),  # rollup_monthly: the 1st, 03:30
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
    group: str = ""  # run group (GROUPS): which job runs it; "" = the grain's


@dataclass
class Plan:
    stale: list[Stale] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    # Stale, not requested: waiting for a parent (stale, requested or in flight), behind a
    # parent whose latest write failed a blocking check, or inconsistent too many times.
    held: list[Stale] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# Partitions on each grain
# --------------------------------------------------------------------------------------


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone)


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def end_of(grain: str, start: datetime, zone: ZoneInfo) -> datetime:
    if grain == "hourly":
        return start + timedelta(hours=1)
    if grain == "monthly":  # local months (defs/partitions.monthly)
        return _midnight(_next_month(start.astimezone(zone).date()), zone)
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
    if grain == "monthly":
        day = day.replace(day=1)
        while _midnight(day, zone) < hi:
            if end_of(grain, _midnight(day, zone), zone) > lo:
                out.append(_midnight(day, zone))
            day = _next_month(day)
        return out
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


@dataclass(frozen=True)
class Verdict:
    """What the checks said of a partition's latest write (sql/018)."""

    inconsistent: bool  # the latest write disagrees with its parents as they are now
    inconsistent_runs: int  # writes in a row found inconsistent
    failed_check: str | None  # a blocking check that failed on the latest write


class Versions:
    """The version rows in and around the lookback, indexed for range maxima."""

    def __init__(self, rows: Iterable[tuple]) -> None:
        self.rows: dict[Partition, tuple[int, int | None]] = {}
        self.verdicts: dict[Partition, Verdict] = {}
        by_asset: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
        failed: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
        for asset, start, version, computed_from, *flags in rows:
            self.rows[(asset, start)] = (int(version), computed_from)
            by_asset[asset].append((start, int(version)))
            if flags:
                inconsistent_version, runs, check = flags
                if inconsistent_version == version or check:
                    self.verdicts[(asset, start)] = Verdict(
                        inconsistent_version == version, int(runs or 0), check
                    )
                if check:
                    failed[asset].append((start, check))
        self._starts = {a: [s for s, _ in sorted(v)] for a, v in by_asset.items()}
        self._versions = {a: [x for _, x in sorted(v)] for a, v in by_asset.items()}
        self._failed = {a: sorted(v) for a, v in failed.items()}

    def failed_in(self, asset: str, lo: datetime, hi: datetime) -> tuple[datetime, str] | None:
        """The first partition of ``asset`` in [lo, hi) whose latest write failed a blocking
        check, and the check."""
        items = self._failed.get(asset, [])
        i = bisect.bisect_left(items, (lo, ""))
        return items[i] if i < len(items) and items[i][0] < hi else None

    def max_in(self, asset: str, lo: datetime, hi: datetime) -> int | None:
        starts = self._starts.get(asset, [])
        i, j = bisect.bisect_left(starts, lo), bisect.bisect_left(starts, hi)
        return max(self._versions[asset][i:j]) if j > i else None

    @classmethod
    def load(cls, conn: sa.Connection, since: datetime, graph: Graph) -> Versions:
        rows = conn.execute(
            sa.text(
                "SELECT asset, partition_start, version, computed_from, "
                "inconsistent_version, inconsistent_runs, failed_check "
                "FROM ops.partition_versions WHERE partition_start >= :lo"
            ),
            # Whole weeks (and months, when a monthly level is healed) around the
            # lookback, and the parents' reach before it.
            {"lo": since - timedelta(days=graph.reach_days())},
        ).all()
        return cls(rows)


def window_start(now: datetime, settings: Settings) -> datetime:
    """Where healing looks back to: the lookback, extended to the Monday that starts its
    first week, so every partition of every grain that overlaps it is healed whole (a day
    is never rebuilt from hours of which half were out of reach)."""
    zone = settings.zone
    day = (now - timedelta(days=settings.late_data_lookback_days)).astimezone(zone).date()
    return _midnight(day - timedelta(days=day.weekday()), zone)


def find_stale(
    vs: Versions, now: datetime, settings: Settings, origin: datetime, graph: Graph
) -> list[Stale]:
    """Stale partitions of every asset ``graph`` heals in the lookback, lowest level first.

    Only partitions that ended ``settle`` ago (the schedules own the open windows).
    """
    zone = settings.zone
    since = window_start(now, settings)
    settle = timedelta(minutes=settings.late_data_settle_minutes)
    out: list[Stale] = []
    for node in graph.nodes:
        fill = node.switched_on(settings)
        for start in partitions_between(node.grain, since, now, origin, zone):
            end = end_of(node.grain, start, zone)
            if end + settle > now:
                continue
            lo = parents_from(node, start, zone)
            parent_max = max(
                (v for p in node.parents if (v := vs.max_in(p, lo, end)) is not None),
                default=None,
            )
            if parent_max is None:
                continue  # no parent holds data: nothing to compute from
            row = vs.rows.get((node.asset, start))
            verdict = vs.verdicts.get((node.asset, start))
            if row is None:
                if fill and now >= end + DUE[node.run_group]:
                    out.append(Stale(node.asset, start, "missing"))
            elif row[1] is None or parent_max > row[1]:
                out.append(Stale(node.asset, start, "parent changed"))
            elif verdict is not None and verdict.inconsistent:
                runs = verdict.inconsistent_runs
                out.append(
                    Stale(node.asset, start, f"{STUCK} {runs} recomputations")
                    if runs > MAX_INCONSISTENT_RUNS
                    else Stale(node.asset, start, "inconsistent with its parents")
                )
    return out


def parents_from(node: Node, start: datetime, zone: ZoneInfo) -> datetime:
    """Where the parents' partitions that ``node``'s partition at ``start`` reads begin."""
    if not node.days_before:
        return start
    return _midnight(start.astimezone(zone).date() - timedelta(days=node.days_before), zone)


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


def _descendants_in_group(
    assets: set[str], group: str, settings: Settings, graph: Graph, together: bool = True
) -> set[str]:
    out = set(assets)
    for both in TOGETHER if together else ():
        if out & both:
            out |= {a for a in both if graph.by_asset[a].switched_on(settings)}
    changed = True
    while changed:
        changed = False
        for node in graph.nodes:
            if node.run_group == group and node.asset not in out and out & set(node.parents):
                out.add(node.asset)
                changed = True
    return out


def plan(
    vs: Versions,
    now: datetime,
    settings: Settings,
    origin: datetime,
    graph: Graph,
    in_flight: Sequence[InFlight] = (),
) -> Plan:
    zone = settings.zone
    result = Plan(stale=find_stale(vs, now, settings, origin, graph))
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

    for group in GROUPS:
        grain = GROUP_GRAIN.get(group, group)
        chosen: dict[datetime, tuple[str, ...]] = {}
        by_start: dict[datetime, set[str]] = defaultdict(set)
        for s in result.stale:
            if graph.group_of[s.asset] != group:
                continue
            if s.reason.startswith(STUCK):  # reported, not recomputed again
                result.held.append(s)
            else:
                by_start[s.start].add(s.asset)
        for start in sorted(by_start):
            end = end_of(grain, start, zone)
            run = _descendants_in_group(by_start[start], group, settings, graph)
            # Behind a parent whose latest write failed a blocking check: held, with the
            # assets of the run that depend on them; the others still run.
            failed = {
                a: why for a in run if (why := _failed_parent(vs, a, run, start, zone, graph))
            }
            if failed:
                out = _descendants_in_group(set(failed), group, settings, graph, False) & run
                why_of = next(iter(failed.values()))
                result.held += [
                    Stale(a, start, failed.get(a, why_of)) for a in sorted(out & by_start[start])
                ]
                run -= out
                if not run & by_start[start]:
                    continue
            blocked = any(r.covers(a, start, end) for a in run for r in in_flight) or any(
                busy(p, parents_from(graph.by_asset[a], start, zone), end, run)
                for a in run
                for p in graph.by_asset[a].parents
            )
            if blocked:
                result.held += [
                    Stale(a, start, reasons[(a, start)]) for a in sorted(run & by_start[start])
                ]
                continue
            ordered = tuple(n.asset for n in graph.nodes if n.asset in run)
            chosen[start] = ordered
        # Contiguous partitions with the same assets: one multi-partition run.
        for start in sorted(chosen):
            assets = chosen[start]
            prev = result.requests[-1] if result.requests else None
            if (
                prev is not None
                and prev.group == group
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
                    group,
                )
            else:
                result.requests.append(
                    Request(
                        grain,
                        assets,
                        start,
                        start,
                        1,
                        tuple(sorted(_why(assets, start, reasons))),
                        group,
                    )
                )
            for a in assets:
                if (a, start) not in reasons:  # stale ones are marked already
                    bisect.insort(marked[a], start)
    return result


HELD_BY_CHECK = "a parent's blocking check failed"  # reason prefix


def _failed_parent(
    vs: Versions, asset: str, run: set[str], start: datetime, zone: ZoneInfo, graph: Graph
) -> str | None:
    """Why ``asset`` must not be computed at ``start``: a parent outside the run whose
    latest write over the partitions read failed a blocking check (its rows are suspect;
    they stay out of the levels above until a write passes)."""
    node = graph.by_asset[asset]
    lo, end = parents_from(node, start, zone), end_of(node.grain, start, zone)
    for p in node.parents:
        if p in run or p in graph.sources:
            continue
        hit = vs.failed_in(p, lo, end)
        if hit is not None:
            return f"{HELD_BY_CHECK}: {p} {hit[0].isoformat()} {hit[1]}"
    return None


def _whys(assets: Iterable[str], start: datetime, reasons: dict) -> tuple[str, ...]:
    return tuple(sorted(_why(assets, start, reasons)))


def _why(assets: Iterable[str], start: datetime, reasons: dict) -> set[str]:
    return {reasons.get((a, start), "parent rewritten in this run") for a in assets}


# --------------------------------------------------------------------------------------
# Raw hours without a version (history older than the change log)
# --------------------------------------------------------------------------------------


def probe_raw_hours(
    conn: sa.Connection,
    table: str,
    time_column: str,
    lo: datetime,
    hi: datetime,
    asset: str = RAW,
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
        {"raw": asset, "lo": lo, "hi": hi},
    ).rowcount


# --------------------------------------------------------------------------------------
# One tick, as the sensor and `agg-pipeline status` see it
# --------------------------------------------------------------------------------------


def assess(
    engine: sa.Engine,
    now: datetime,
    settings: Settings,
    origin: datetime,
    graph: Graph,
    in_flight: Sequence[InFlight] = (),
    probes: Sequence[tuple[str, str, str]] = (),
) -> Plan:
    """Stale partitions of ``graph`` and the runs that fix them next. ``probes``: (source
    asset, table, time column) to version source hours that hold rows but no version yet."""
    since = window_start(now, settings)
    if probes:
        lo = max(origin, origin + timedelta(hours=(since - origin) // timedelta(hours=1)))
        with engine.begin() as conn:
            for asset, table, column in probes:
                probe_raw_hours(conn, table, column, lo, now, asset)
    with engine.connect() as conn:
        vs = Versions.load(conn, since, graph)
    return plan(vs, now, settings, origin, graph, in_flight)


# --------------------------------------------------------------------------------------
# Cross-level consistency, as the levels are now (consistency.py; independent of versions)
# --------------------------------------------------------------------------------------


def _settled_bounds(now: datetime, settings: Settings, origin: datetime) -> dict:
    """Query bounds over the settled partitions of the healing window (the open hour / day
    / week are still being written)."""
    hi = now - timedelta(minutes=settings.late_data_settle_minutes)
    hi_hour = origin + timedelta(hours=max(0, (hi - origin) // timedelta(hours=1)))
    return consistency.params(
        window_start(now, settings),
        hi_hour,
        origin,
        settings.zone,
        settings.timezone,
        settings.median_max_readings,
    )


SCAN_MARK = "ops.consistency_scan"  # ops.watermarks row: when the healer last scanned


def scan(
    engine: sa.Engine,
    now: datetime,
    settings: Settings,
    origin: datetime,
    raw: tuple[str, str] | None,
) -> list[consistency.Finding]:
    """The healer's on-demand consistency check: over the healing window, at most every
    ``AGG_PIPELINE_CONSISTENCY_SCAN_MINUTES`` (0: every tick); each rollup partition that
    disagrees with its parents is flagged, so this tick requests it. Returns the findings
    (empty when it was not time to scan)."""
    every = timedelta(minutes=settings.consistency_scan_minutes)
    with engine.begin() as conn:
        due = conn.execute(
            sa.text(
                "INSERT INTO ops.watermarks AS w (table_name, complete_until) VALUES (:t, :now) "
                "ON CONFLICT (table_name) DO UPDATE SET complete_until = EXCLUDED.complete_until "
                "WHERE w.complete_until <= CAST(:now AS timestamptz) - make_interval(secs => :s) "
                "OR w.complete_until > :now RETURNING 1"
            ),
            {"t": SCAN_MARK, "now": now, "s": every.total_seconds()},
        ).first()
        if due is None:
            return []
        found = consistency.find(
            conn, _settled_bounds(now, settings, origin), raw, settings, consistency.CHECKED
        )
        by_asset: dict[str, set[datetime]] = defaultdict(set)
        for f in found:
            by_asset[f.asset].add(f.start(settings.zone))
        for asset, starts in by_asset.items():
            consistency.flag(conn, asset, sorted(starts))
    return found


def consistency_problems(
    engine: sa.Engine,
    now: datetime,
    settings: Settings,
    origin: datetime,
    graph: Graph,
    raw: tuple[str, str] | None = None,
) -> list[str]:
    """Stale partitions (versions), source changes not yet observed, levels that disagree
    with their parents, NULL medians raw could fill, and partitions held back (behind a
    failed blocking check, or inconsistent too often) - over the settled partitions of the
    healing window. Empty when everything is current and consistent."""
    since = window_start(now, settings)
    settle = timedelta(minutes=settings.late_data_settle_minutes)
    problems: list[str] = []
    with engine.connect() as conn:
        vs = Versions.load(conn, since, graph)
        pending = conn.execute(
            sa.text(
                "SELECT count(DISTINCT date_bin('1 hour', bucket_start, :origin)) FROM ("
                "SELECT bucket_start FROM raw.readings_change_log UNION ALL "
                "SELECT bucket_start FROM raw.source_change_log) AS log "
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
        found = consistency.find(conn, _settled_bounds(now, settings, origin), raw, settings)
    by_what: dict[str, list[consistency.Finding]] = defaultdict(list)
    for f in found:
        by_what[f.what].append(f)
    for what, items in by_what.items():
        label = "partition(s)" if "NULL medians" in what else "partition(s) disagree,"
        problems.append(
            f"{what}: {len(items)} {label} e.g. {items[0].bucket} ({items[0].sensors} sensor(s))"
        )
    result = plan(vs, now, settings, origin, graph)
    by_asset: dict[str, list[Stale]] = defaultdict(list)
    for s in result.stale:
        by_asset[s.asset].append(s)
    for asset, items in by_asset.items():
        first = min(items, key=lambda s: s.start)
        problems.append(
            f"{asset}: {len(items)} stale partition(s) in the healing window, e.g. "
            f"{first.start.isoformat()} ({first.reason})"
        )
    for s in result.held:
        if s.reason.startswith((HELD_BY_CHECK, STUCK)):
            problems.append(f"{s.asset}: held at {s.start.isoformat()}: {s.reason}")
    return problems
