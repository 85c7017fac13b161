"""``agg-pipeline status``: the old ETL's status, from the Dagster instance and the warehouse.

Per asset: the latest materialized partition, freshness against its FreshnessPolicy,
partitions missing or failed in the last N days, failing checks, and the row
count of its table; plus whether the warehouse is reachable. ``ok`` is False - and the
command exits non-zero - when anything is unreachable, stale, missing, failed or failing.

Status is most needed when something just broke, so it never crashes: each part (the
warehouse, raw rows, and per asset its materializations, partitions, checks and rows) is
read on its own, and a part that cannot be read is reported as a problem, naming the part
and the error, while the others are still shown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

import dagster as dg
import sqlalchemy as sa

from agg_pipeline.config import events as events_spec
from agg_pipeline.config.catalogue import Catalogue, InfluxSource, get_catalogue
from agg_pipeline.config.events import get_events_catalogue
from agg_pipeline.core import hierarchy
from agg_pipeline.core.cron import previous_tick
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse import figures

TABLES = {
    **{level.asset: level.table for level in hierarchy.DERIVED},
    "conditions_daily": "bi.daily_sensor_conditions",
    "dashboard_views": "bi.sensor_latest",
}
# A partition counts as missing once its window ended this long ago without being
# materialized (the schedules run at :05, 01:30 and Monday 02:00).
GRACE = {
    "0 * * * *": timedelta(hours=2),
    "0 0 * * *": timedelta(hours=3),
    "0 0 * * 1": timedelta(hours=5),
}


@dataclass
class AssetStatus:
    asset: str
    latest_partition: str | None = None
    last_materialized_at: str | None = None
    freshness: str = "UNKNOWN"  # PASS | WARN | FAIL | UNKNOWN
    freshness_detail: str = ""
    missing_partitions: list[str] = field(default_factory=list)
    # Event rollups: partitions of the last N days whose raw events table has no event in
    # their window - nothing to compute, so not missing (written as empty when they run).
    nothing_to_compute: list[str] = field(default_factory=list)
    failed_partitions: list[str] = field(default_factory=list)
    failing_checks: list[str] = field(default_factory=list)
    warning_checks: list[str] = field(default_factory=list)
    # Checks whose latest run ended before evaluating them: "<check> (run <id> <status>)".
    unevaluated_checks: list[str] = field(default_factory=list)
    rows: int | None = None
    # Parts of this asset's status that could not be read: "<part>: <error>".
    unreadable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.freshness in ("PASS", "WARN")
            and not self.missing_partitions
            and not self.failed_partitions
            and not self.failing_checks
            and not self.unevaluated_checks
            and not self.unreadable
        )


@dataclass
class Status:
    checked_at: str
    warehouse: str
    warehouse_reachable: bool
    dagster_instance: str
    raw_rows_estimate: int | None
    assets: list[AssetStatus]
    problems: list[str]
    # InfluxDB's /health when the catalogue reads from or writes to InfluxDB; None when it
    # uses no InfluxDB (the old ETL's `influx_connected`).
    influx_connected: bool | None = None
    influx_detail: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        for a, obj in zip(d["assets"], self.assets, strict=True):
            a["ok"] = obj.ok
        return d


def freshness(
    policy: dg.FreshnessPolicy | None, last: datetime | None, now: datetime
) -> tuple[str, str]:
    """PASS / WARN / FAIL of a FreshnessPolicy given the last materialization time."""
    if policy is None:
        return "UNKNOWN", "no freshness policy"
    if last is None:
        return "FAIL", "never materialized"
    age = now - last
    if isinstance(policy, dg.FreshnessPolicy) and hasattr(policy, "fail_window"):
        fail = policy.fail_window.to_timedelta()
        warn = policy.warn_window.to_timedelta() if policy.warn_window else None
        detail = f"last {age.total_seconds() / 60:.0f} min ago (fails after {fail})"
        if age > fail:
            return "FAIL", detail
        if warn and age > warn:
            return "WARN", detail
        return "PASS", detail
    deadline = previous_tick(policy.deadline_cron, now, policy.timezone)
    lower = deadline - policy.lower_bound_delta
    detail = (
        f"must be materialized between {lower:%Y-%m-%d %H:%M} and {deadline:%H:%M} "
        f"{policy.timezone}"
    )
    return ("PASS" if last >= lower else "FAIL"), detail


def influx_connection(
    catalogue: Catalogue, influx: InfluxResource | None = None, timeout_s: float = 2.0
) -> tuple[bool | None, str]:
    """(influx_connected, detail): None when ``catalogue`` uses no InfluxDB, else whether
    InfluxDB's ``/health`` passes within ``timeout_s`` - never raises, never waits longer.
    Plain, so other status views (the HTTP status) report the same finding."""
    if not (isinstance(catalogue.source, InfluxSource) or catalogue.influx_sink is not None):
        return None, "the catalogue uses no InfluxDB"
    influx = influx if influx is not None else InfluxResource.from_env()
    return influx.health(timeout_s)


def _table_rows(engine: sa.Engine, table: str) -> int | None:
    with engine.connect() as conn:
        return figures.table_rows(conn, table, 5.0)


def _raw_rows(engine: sa.Engine) -> int | None:

    catalogue = get_catalogue()
    if not catalogue.raw_in_postgres:  # an InfluxDB source is not counted here
        return None
    return _table_rows(engine, catalogue.source.table)


_T = TypeVar("_T")


def _error(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__


def _guarded(unreadable: list[str], part: str, read: Callable[[], _T], default: _T) -> _T:
    """``read()``, or ``default`` with "<part>: <error>" noted when it raises."""
    try:
        return read()
    except Exception as exc:  # status reports what it cannot read; it never crashes
        unreadable.append(f"{part}: {_error(exc)}")
        return default


class AssetNode(Protocol):
    """What status reads of an asset graph node (Dagster's AssetNode is not public API)."""

    @property
    def key(self) -> dg.AssetKey: ...
    @property
    def partitions_def(self) -> dg.PartitionsDefinition | None: ...
    @property
    def freshness_policy(self) -> dg.FreshnessPolicy | None: ...


def asset_status(
    instance: dg.DagsterInstance,
    node: AssetNode,
    check_keys: Iterable[dg.AssetCheckKey],
    days: int,
    now: datetime,
) -> AssetStatus:
    status = AssetStatus(node.key.to_user_string())
    unreadable = status.unreadable
    _guarded(
        unreadable, "materializations", lambda: _materializations(instance, node, status, now), None
    )
    if isinstance(node.partitions_def, dg.TimeWindowPartitionsDefinition):
        _guarded(
            unreadable, "partitions", lambda: _partitions(instance, node, status, days, now), None
        )
    for check_key in check_keys:
        if check_key.asset_key == node.key:
            _guarded(
                unreadable,
                f"check {check_key.name}",
                lambda k=check_key: _check(instance, k, status),
                None,
            )
    return status


def _materializations(
    instance: dg.DagsterInstance, node: AssetNode, status: AssetStatus, now: datetime
) -> None:
    event = instance.get_latest_materialization_event(node.key)
    last = None
    if event is not None:
        last = datetime.fromtimestamp(event.timestamp, UTC)
        status.last_materialized_at = last.isoformat(timespec="seconds")
        status.latest_partition = event.asset_materialization.partition
    status.freshness, status.freshness_detail = freshness(node.freshness_policy, last, now)


def _partitions(
    instance: dg.DagsterInstance, node: AssetNode, status: AssetStatus, days: int, now: datetime
) -> None:
    key, pdef = node.key, node.partitions_def
    grace = GRACE.get(pdef.cron_schedule, timedelta(hours=3))
    window = dg.TimeWindow(now - timedelta(days=days), now - grace)
    keys = [
        k
        for k in pdef.get_partition_keys_in_time_window(window)
        if pdef.time_window_for_partition_key(k).end <= now - grace
    ]
    if keys:
        by_key = instance.get_status_by_partition(key, keys, pdef) or {}
        for k in keys:
            state = by_key.get(k)
            if state == dg.AssetPartitionStatus.FAILED:
                status.failed_partitions.append(k)
            elif state not in (
                dg.AssetPartitionStatus.MATERIALIZED,
                dg.AssetPartitionStatus.IN_PROGRESS,
            ):
                status.missing_partitions.append(k)
    # The latest partition in time (the latest event may be an old partition's
    # late-data correction).
    materialized = instance.get_materialized_partitions(key)
    status.latest_partition = max(
        (k for k in materialized if pdef.has_partition_key(k)),
        key=lambda k: pdef.time_window_for_partition_key(k).start,
        default=None,
    )


def _check(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, status: AssetStatus) -> None:
    record = instance.get_latest_asset_check_evaluation_record(check_key)
    if record is None:
        return
    evaluation = record.evaluation
    if not isinstance(evaluation, dg.AssetCheckEvaluation):
        # Only planned (the record holds the run's AssetCheckEvaluationPlanned): normal in
        # a run still going; in a finished run (it failed before its checks) it never ran.
        run = instance.get_run_by_id(record.run_id)
        if run is None or run.is_finished:
            state = run.status.value if run is not None else "deleted"
            status.unevaluated_checks.append(f"{check_key.name} (run {record.run_id[:8]} {state})")
        return
    if not evaluation.passed:
        target = (
            status.warning_checks
            if evaluation.severity == dg.AssetCheckSeverity.WARN
            else status.failing_checks
        )
        target.append(check_key.name)


def collect(
    defs: dg.Definitions,
    instance: dg.DagsterInstance | None,
    engine: sa.Engine,
    warehouse_label: str,
    days: int = 7,
    now: datetime | None = None,
    influx: InfluxResource | None = None,
) -> Status:
    now = now or datetime.now(UTC)
    problems: list[str] = []
    influx_ok, influx_detail = _guarded(
        problems, "InfluxDB", lambda: influx_connection(get_catalogue(), influx), (None, "")
    )
    if influx_ok is False:
        problems.append(f"InfluxDB unreachable: {influx_detail}")
    reachable = True
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        reachable = False
        problems.append(f"warehouse unreachable: {str(exc.orig).strip().splitlines()[0]}")
    except Exception as exc:
        reachable = False
        problems.append(f"warehouse unreachable: {_error(exc)}")

    raw_estimate = None
    if reachable:
        raw_estimate = _guarded(problems, "raw readings", lambda: _raw_rows(engine), None)

    if reachable:
        problems.extend(
            _guarded(problems, "self-healing", lambda: healing_problems(engine, now), [])
        )

    graph = _guarded(problems, "asset graph", defs.resolve_asset_graph, None)
    # Sorted: a set's order changes between processes, and so would the report's.
    check_keys = sorted(graph.asset_check_keys, key=str) if graph is not None else []
    asset_keys = graph.materializable_asset_keys if graph is not None else []
    assets: list[AssetStatus] = []
    events: dict[str, list[tuple[str, str]]] = _guarded(
        problems, "events catalogue", event_sources, {}
    )
    tables = {**TABLES, **_guarded(problems, "events catalogue", event_tables, {})}
    if instance is None:
        problems.append("Dagster instance unavailable (set DAGSTER_HOME)")
    else:
        for key in sorted(asset_keys, key=lambda k: k.to_user_string()):
            node = graph.get(key)
            st = asset_status(instance, node, check_keys, days, now)
            if reachable and st.asset in events:
                _guarded(
                    st.unreadable,
                    "raw events",
                    lambda n=node, s=st: judge_event_asset(engine, n, s, events[s.asset]),
                    None,
                )
            if reachable and st.asset in tables:
                st.rows = _guarded(
                    st.unreadable,
                    f"rows of {tables[st.asset]}",
                    lambda t=tables[st.asset]: _table_rows(engine, t),
                    None,
                )
            assets.append(st)
            if st.freshness == "FAIL":
                problems.append(f"{st.asset}: stale ({st.freshness_detail})")
            if st.missing_partitions:
                problems.append(
                    f"{st.asset}: {len(st.missing_partitions)} partition(s) missing in the "
                    f"last {days} days, e.g. {st.missing_partitions[0]}"
                )
            if st.failed_partitions:
                problems.append(
                    f"{st.asset}: {len(st.failed_partitions)} failed partition(s), "
                    f"e.g. {st.failed_partitions[0]}"
                )
            if st.failing_checks:
                problems.append(f"{st.asset}: failing checks {', '.join(st.failing_checks)}")
            if st.unevaluated_checks:
                problems.append(
                    f"{st.asset}: checks not evaluated, their run ended first: "
                    + ", ".join(st.unevaluated_checks)
                )
            problems.extend(f"{st.asset}: cannot read {part}" for part in st.unreadable)
    return Status(
        checked_at=now.isoformat(timespec="seconds"),
        warehouse=warehouse_label,
        warehouse_reachable=reachable,
        dagster_instance="unavailable"
        if instance is None
        else _guarded(
            problems, "dagster instance", lambda: type(instance.run_storage).__name__, "?"
        ),
        raw_rows_estimate=raw_estimate,
        assets=assets,
        problems=problems,
        influx_connected=influx_ok,
        influx_detail=influx_detail,
    )


def event_sources() -> dict[str, list[tuple[str, str]]]:
    """Per event asset (a rollup level, or ``analytics_views``): the raw event tables it is
    computed from, with their time column; and every event level's table."""
    catalogue = get_events_catalogue()
    out: dict[str, list[tuple[str, str]]] = {}
    for level in events_spec.levels(catalogue):
        out[level.asset] = [(level.source.table, level.source.time_column)]
    out["analytics_views"] = sorted({(s.table, s.time_column) for s in catalogue.sources.values()})
    return out


def event_tables() -> dict[str, str]:
    return {lv.asset: lv.table for lv in events_spec.levels(get_events_catalogue())}


def _with_events(
    engine: sa.Engine, sources: list[tuple[str, str]], windows: list[tuple[str, datetime, datetime]]
) -> set[str]:
    """The keys of ``windows`` (key, start, end) in which one of ``sources`` has an event
    (an index probe per window on the time column)."""
    found: set[str] = set()
    if not windows:
        return found
    keys, starts, ends = (list(x) for x in zip(*windows, strict=True))
    with engine.connect() as conn:
        for table, time_column in sources:
            t = f'"{time_column}"'
            schema, name = table.split(".")
            found |= set(
                conn.execute(
                    sa.text(
                        "SELECT w.k FROM unnest(CAST(:k AS text[]), CAST(:s AS timestamptz[]), "
                        f"CAST(:e AS timestamptz[])) AS w(k, s, e) WHERE EXISTS (SELECT 1 FROM "
                        f'"{schema}"."{name}" r WHERE r.{t} >= w.s AND r.{t} < w.e)'
                    ),
                    {"k": keys, "s": starts, "e": ends},
                ).scalars()
            )
    return found


def _any_event(engine: sa.Engine, sources: list[tuple[str, str]]) -> bool:
    with engine.connect() as conn:
        return any(
            conn.execute(sa.text(f'SELECT EXISTS (SELECT 1 FROM "{s}"."{n}")')).scalar_one()
            for s, n in (table.split(".") for table, _ in sources)
        )


def judge_event_asset(
    engine: sa.Engine, node: AssetNode, st: AssetStatus, sources: list[tuple[str, str]]
) -> None:
    """An event rollup is expected only where there are events: a partition without any in
    its window is not missing, and an asset over tables holding no event at all is not
    stale for never having run (the readings' assets, by contrast, always have a source)."""
    pdef = node.partitions_def
    if st.missing_partitions and isinstance(pdef, dg.TimeWindowPartitionsDefinition):
        windows = [
            (k, tw.start, tw.end)
            for k in st.missing_partitions
            for tw in [pdef.time_window_for_partition_key(k)]
        ]
        due = _with_events(engine, sources, windows)
        st.nothing_to_compute = [k for k in st.missing_partitions if k not in due]
        st.missing_partitions = [k for k in st.missing_partitions if k in due]
    if st.last_materialized_at is None and not _any_event(engine, sources):
        names = ", ".join(table for table, _ in sources)
        st.freshness, st.freshness_detail = "PASS", f"nothing to compute yet: no events in {names}"


def healing_problems(engine: sa.Engine, now: datetime) -> list[str]:
    """Self-healing's view (healing.py): stale partitions in the healing window, raw
    changes not yet observed, levels that disagree with their parents as they are now,
    NULL medians the raw readings could fill, partitions held behind a failed blocking
    check or inconsistent too often. Any of them is a problem: ``ok`` means none."""
    from agg_pipeline.config.settings import get_settings
    from agg_pipeline.defs.operations.self_healing import GRAPH, origin
    from agg_pipeline.warehouse import healing

    catalogue = get_catalogue()
    raw = (
        (catalogue.source.table, catalogue.source.time_column)
        if catalogue.raw_in_postgres
        else None
    )
    try:
        return healing.consistency_problems(engine, now, get_settings(), origin(), GRAPH, raw)
    except sa.exc.ProgrammingError as exc:  # e.g. not migrated yet: say so, do not crash
        return [f"self-healing state unreadable: {str(exc.orig).strip().splitlines()[0]}"]


def render(status: Status) -> str:
    lines = [
        f"agg_pipeline status at {status.checked_at}",
        f"  warehouse: {status.warehouse} - "
        + ("reachable" if status.warehouse_reachable else "UNREACHABLE"),
        f"  dagster instance: {status.dagster_instance}",
    ]
    if status.raw_rows_estimate is not None:
        lines.append(f"  raw readings: {status.raw_rows_estimate:,} rows")
    if status.influx_connected is not None:
        lines.append(
            "  influxdb: "
            + ("connected" if status.influx_connected else "UNREACHABLE")
            + f" - {status.influx_detail}"
        )
    lines.append("")
    lines.append(
        f"  {'asset':<18} {'latest partition':<20} {'fresh':<6} {'missing':>7} "
        f"{'failed':>6} {'rows':>12}  checks"
    )
    for a in status.assets:
        checks = (
            ", ".join(
                [f"FAIL {c}" for c in a.failing_checks]
                + [f"warn {c}" for c in a.warning_checks]
                + [f"not run {c.split()[0]}" for c in a.unevaluated_checks]
            )
            or "ok"
        )
        rows = f"{a.rows:,}" if a.rows is not None else "-"
        lines.append(
            f"  {a.asset:<18} {a.latest_partition or '-':<20} {a.freshness:<6} "
            f"{len(a.missing_partitions):>7} {len(a.failed_partitions):>6} {rows:>12}  {checks}"
        )
    lines.append("")
    if status.problems:
        lines.append("PROBLEMS:")
        lines.extend(f"  - {p}" for p in status.problems)
    else:
        lines.append("all fresh, nothing failing")
    return "\n".join(lines)
