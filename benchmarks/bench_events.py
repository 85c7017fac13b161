"""Event metrics benchmark: executions through the graph vs PostgreSQL's floor and the old way.

Part of ``make bench`` (``--event-executions N``, default 5M over ``--event-days`` 30 for
200 workspaces and 2,000 users; 0 skips it). Measured side by side on the same data:

1. floor - the same aggregates (counts by status, avg / min / max, exact p50 / p95 with
   percentile_cont, credits, distinct users) per workspace and hour, day, week and month,
   one bare GROUP BY each into a temp table: no judging of bad events, no duplicate test,
   no delete, no index upkeep;
2. pipeline - execution_metrics_hourly / _daily / _weekly / _monthly through Dagster as a
   backfill runs them: one `dagster asset materialize --partition-range` process each;
3. old way - the Celery job: per hour, pull the hour's executions into pandas, aggregate in
   Python, insert row by row (sampled hours, scaled to all of them, and said so).
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import sqlalchemy as sa

from agg_pipeline.config import events as spec
from agg_pipeline.config.settings import get_settings
from agg_pipeline.core.windows import Window
from agg_pipeline.warehouse import events as events_sql
from agg_pipeline.warehouse import late_data
from agg_pipeline.warehouse.engine import WarehouseResource

GENERATE = """
INSERT INTO raw.executions
SELECT i, CAST(:start AS timestamptz) + random() * :seconds * interval '1 second',
       'ws-' || ((i % :users) % :workspaces), 'user-' || (i % :users),
       CASE WHEN r < 0.9 THEN 'success' WHEN r < 0.97 THEN 'failed' ELSE 'cancelled' END,
       d, d / 1000 * 0.05
FROM (SELECT i, random() AS r,
             exp(ln(2000) + 0.6 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))
             * CASE WHEN random() < 0.02 THEN 20 ELSE 1 END AS d
        FROM generate_series(1, :n) AS i) s
"""
# An at-least-once queue: 0.5 % of executions delivered twice.
DUPLICATES = "INSERT INTO raw.executions SELECT * FROM raw.executions WHERE id % 200 = 0"

_MEASURES = (
    "count(*) AS n, count(*) FILTER (WHERE status = 'success') AS ok, "
    "count(*) FILTER (WHERE status = 'failed') AS failed, "
    "count(*) FILTER (WHERE status = 'cancelled') AS cancelled, "
    "avg(duration_ms) AS avg, min(duration_ms) AS lo, max(duration_ms) AS hi, "
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50, "
    "percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95, "
    "sum(credits) AS credits, count(DISTINCT user_id) AS users"
)
FLOOR_BUCKETS = {
    "hourly": "date_bin('1 hour', time, :s)",
    "daily": "(time AT TIME ZONE 'UTC')::date",
    "weekly": "date_trunc('week', time AT TIME ZONE 'UTC')::date",
    "monthly": "date_trunc('month', time AT TIME ZONE 'UTC')::date",
}


def generate(engine: sa.Engine, start: datetime, days: float, n: int, workspaces: int,
             users: int) -> int:  # fmt: skip
    with engine.begin() as conn:
        conn.execute(
            sa.text(GENERATE),
            {"start": start, "seconds": days * 86400, "n": n, "users": users,
             "workspaces": workspaces},
        )  # fmt: skip
        conn.execute(sa.text(DUPLICATES))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE raw.executions"))
        return int(conn.execute(sa.text("SELECT count(*) FROM raw.executions")).scalar_one())


def pipeline_runs(
    start: datetime, end: datetime
) -> dict[str, tuple[list[str], datetime, datetime]]:
    """Per grain: the backfill's partition range over the data (whole weeks and months
    only: a period still open is not a partition yet) and the window it reads."""
    last_hour, last_day = end - timedelta(hours=1), (end - timedelta(days=1)).date()
    runs = {
        "hourly": (["--partition-range", f"{start:%Y-%m-%d-%H:00}...{last_hour:%Y-%m-%d-%H:00}"],
                   start, end),
        "daily": (["--partition-range", f"{start:%Y-%m-%d}...{last_day:%Y-%m-%d}"], start, end),
    }  # fmt: skip
    monday = start.date() + timedelta(days=(7 - start.weekday()) % 7)
    weeks = []
    while monday + timedelta(days=7) <= end.date():
        weeks.append(monday)
        monday += timedelta(days=7)
    if weeks:
        lo = datetime.combine(weeks[0], datetime.min.time(), tzinfo=UTC)
        runs["weekly"] = (
            ["--partition-range", f"{weeks[0]:%Y-%m-%d}...{weeks[-1]:%Y-%m-%d}"],
            lo,
            lo + timedelta(days=7 * len(weeks)),
        )
    first = start.date().replace(day=1)
    nxt = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    if nxt <= datetime.now(UTC).date():
        runs["monthly"] = (
            ["--partition", f"{first:%Y-%m-%d}"],
            datetime.combine(first, datetime.min.time(), tzinfo=UTC),
            datetime.combine(nxt, datetime.min.time(), tzinfo=UTC),
        )
    return runs


def graph_sql(env, runs_by_grain: dict) -> dict[str, dict]:
    """The same windows through ``warehouse.events.write_level`` in this process, as the
    assets call it (finer level and all): the graph's own work without Dagster's fixed
    costs (a process start, one materialization event per partition)."""
    catalogue = spec.load_events_catalogue("analytics")
    levels = {
        lv.grain.value: lv for lv in spec.levels(catalogue) if lv.rollup == "execution_metrics"
    }
    warehouse = WarehouseResource(database_url=env.warehouse_url)
    settings = get_settings()
    out = {}
    for grain, (_, lo, hi) in runs_by_grain.items():
        level = levels[grain]
        finer = events_sql.finer_level(level, list(levels.values()))
        begin = time.perf_counter()
        report = events_sql.write_level(warehouse, level, Window(lo, hi), settings.zone,
                                        settings.future_tolerance_seconds, finer)  # fmt: skip
        out[grain] = {"seconds": time.perf_counter() - begin, "chunks": report.chunks,
                      "merged_chunks": report.merged_chunks}  # fmt: skip
    return out


def old_way_hour(engine: sa.Engine, hour: datetime) -> float:
    """One hourly Celery task: the hour's rows into pandas, aggregates in Python, inserts."""
    begin = time.perf_counter()
    with engine.begin() as conn:
        df = pd.read_sql(
            sa.text("SELECT * FROM raw.executions WHERE time >= :s AND time < :e"),
            conn,
            params={"s": hour, "e": hour + timedelta(hours=1)},
        ).drop_duplicates("id")
        conn.execute(
            sa.text(
                "CREATE TEMP TABLE IF NOT EXISTS old_way (workspace_id text, hour_start "
                "timestamptz, n bigint, ok bigint, avg float8, p50 float8, p95 float8, "
                "credits float8, users bigint)"
            )
        )
        for ws, g in df.groupby("workspace_id"):
            d = g["duration_ms"]
            conn.execute(
                sa.text(
                    "INSERT INTO old_way VALUES (:w, :h, :n, :ok, :avg, :p50, :p95, :c, :u)"
                ),
                {"w": ws, "h": hour, "n": len(g), "ok": int((g["status"] == "success").sum()),
                 "avg": float(d.mean()), "p50": float(d.quantile(0.5)),
                 "p95": float(d.quantile(0.95)), "c": float(g["credits"].sum()),
                 "u": int(g["user_id"].nunique())},
            )  # fmt: skip
    return time.perf_counter() - begin


def measure_events(env, args, start: datetime, reps: int) -> dict:
    """Generate the events into ``env``'s warehouse and measure the three ways."""
    from benchmarks.bench import median_of, progress, run_dagster, sql_time

    days = args.event_days
    end = start + timedelta(days=days)
    progress(f"events: generating {args.event_executions:,} executions over {days:g} days")
    began = time.perf_counter()
    rows = generate(env.engine, start, days, args.event_executions, args.event_workspaces,
                    args.event_users)  # fmt: skip
    # Ingest, not the graph: includes the triggers' upkeep (the change log, and the
    # repeated-id ledger that spares every later run the duplicate probe per event).
    generate_s = time.perf_counter() - began
    # The self-healing sensor's tick would have drained the inserts' change log into
    # raw-hour versions by the time the schedules run (an undrained change keeps a level
    # from merging the one below it).
    late_data.drain_sources(env.engine, start)
    runs_by_grain = pipeline_runs(start, end)
    floor: dict[str, float] = {}
    for grain, (_, lo, hi) in runs_by_grain.items():
        sql = (
            f"CREATE TEMP TABLE floor_{grain} ON COMMIT DROP AS SELECT workspace_id, "
            f"{FLOOR_BUCKETS[grain]} AS b, {_MEASURES} FROM raw.executions "
            "WHERE time >= :s AND time < :e GROUP BY 1, 2"
        )
        floor[grain], _ = median_of(
            lambda sql=sql, lo=lo, hi=hi: sql_time(env.engine, sql, {"s": lo, "e": hi}), reps
        )
    progress("events: the graph (execution_metrics_* through Dagster)")
    runs, total = [], 0.0
    for grain, (partition_args, _, _) in runs_by_grain.items():
        select = f"execution_metrics_{grain}"
        result = run_dagster(env, "agg_pipeline.definitions", select, partition_args)
        runs.append({"assets": select, **result})
        total += result["seconds"]
    progress("events: the graph's SQL alone (write_level in this process, no Dagster)")
    sql_only = graph_sql(env, runs_by_grain)
    hours = int(days * 24)
    step = max(1, hours // max(1, args.event_old_way_hours))
    picked = [start + timedelta(hours=h) for h in range(0, hours, step)][: args.event_old_way_hours]
    progress(f"events: old way, {len(picked)} hourly Python runs")
    per_hour = statistics.median(old_way_hour(env.engine, h) for h in picked)
    floor_total = sum(floor.values())
    return {
        "dataset": {
            "executions": rows,
            "workspaces": args.event_workspaces,
            "users": args.event_users,
            "days": days,
            "start": start.isoformat(),
        },
        "generate_s": generate_s,
        "floor_s": floor,
        "floor_total_s": floor_total,
        "pipeline_runs": runs,
        "pipeline_total_s": total,
        "old_way_per_hour_s": per_hour,
        "old_way_total_s_scaled": per_hour * hours,
        "old_way_note": f"{len(picked)} of {hours} hourly runs measured, total scaled by {hours}",
        "graph_sql_s": sql_only,
        "graph_sql_over_floor": sum(v["seconds"] for v in sql_only.values()) / floor_total,
        "pipeline_over_floor": total / floor_total,
        "old_way_over_pipeline": per_hour * hours / total,
    }


def render(e: dict) -> list[str]:
    d = e["dataset"]
    return [
        f"events: {d['executions']:,} executions ({d['workspaces']} workspaces, {d['users']} "
        f"users, {d['days']:g} days); floor "
        + " + ".join(f"{g} {s:.2f} s" for g, s in e["floor_s"].items())
        + f" = {e['floor_total_s']:.2f} s; graph "
        + " + ".join(f"{r['assets']} {r['seconds']:.2f} s" for r in e["pipeline_runs"])
        + f" = {e['pipeline_total_s']:.2f} s; the graph's SQL alone "
        + " + ".join(
            f"{g} {v['seconds']:.2f} s ({v['merged_chunks']}/{v['chunks']} merged)"
            for g, v in e.get("graph_sql_s", {}).items()
        )
        + f" = {e.get('graph_sql_over_floor', float('nan')):.2f} x floor; "
        f"old way {e['old_way_per_hour_s']:.2f} s per hour "
        f"x {int(d['days'] * 24)} = {e['old_way_total_s_scaled']:.1f} s ({e['old_way_note']}); "
        f"ingest (generate, triggers included) {e.get('generate_s', float('nan')):.1f} s",
    ]


def main(argv: list[str] | None = None) -> int:
    """The event metrics part of ``make bench`` alone (a quicker run at a chosen size)."""
    import argparse
    import json
    from pathlib import Path

    from agg_pipeline.warehouse import migrate
    from benchmarks.bench import BenchEnv, machine, progress

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_events")
    parser.add_argument("--event-executions", type=int, default=5_000_000)
    parser.add_argument("--event-days", type=float, default=30.0)
    parser.add_argument("--event-workspaces", type=int, default=200)
    parser.add_argument("--event-users", type=int, default=2000)
    parser.add_argument("--event-old-way-hours", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the floor")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    first = (datetime.now(UTC).date().replace(day=1) - timedelta(days=1)).replace(day=1)
    env = BenchEnv(args.keep)
    try:
        progress(f"databases {env.names}; migrating")
        migrate.migrate(env.engine)
        result = measure_events(
            env, args, datetime.combine(first, datetime.min.time(), tzinfo=UTC), args.reps
        )
        result["machine"] = machine()
    finally:
        env.close()
    print("\n".join(render(result)))
    print(f"graph / floor {result['pipeline_over_floor']:.2f}; graph SQL / floor "
          f"{result['graph_sql_over_floor']:.2f}; "
          f"old way / graph {result['old_way_over_pipeline']:.1f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
