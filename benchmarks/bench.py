"""The benchmark: the pipeline against the database's own floor and the old approaches.

    python -m benchmarks.bench [--days 1] [--devices 20] [--hz 1] [--json PATH]

Generates the data with the simulator into fresh databases (on the local embedded
PostgreSQL, or the server of DATABASE_URL), then measures, side by side in one run:

1. floor - the bare SQL the graph cannot avoid: the 1-minute GROUP BY and the exact daily
   median (percentile_cont) over the data, each into a temp table (so nothing is pruned);
2. pipeline - the whole graph over the data as a backfill runs it: one Dagster run per
   partitions definition (hourly: 1m, 5m, hourly; daily: rollup + conditions; weekly when
   the data closes a week), each a real `dagster asset materialize --partition-range`
   process on a real instance with PostgreSQL storage; plus the run worker's peak RSS;
3. old way - one run per hourly partition that pulls the raw rows into pandas and
   aggregates in Python, then upserts (sampled hours, scaled up, and said so);
4. backfill bookkeeping - 90 days of hourly partitions with a do-nothing asset, in one run
   (our policy) vs one run per partition (sampled, scaled);
5. read path - dashboard questions from the rollup tables vs from raw rows (p50 / p95);
6. write path - 1000 pattern aggregates in one batch (PostgreSQL; when available); the
   pattern bucket's write / read criteria (bench_influx.py: live InfluxDB when INFLUXDB_*
   are set, else the tests' local protocol server, and the figures say which);
7. incremental - the open hour after new readings land, and a late-data correction;
8. event metrics - executions through execution_metrics_* vs the same aggregates' floor
   and the old per-hour Python job (bench_events.py).
9. HTTP API - each endpoint under 32 concurrent clients (p50 / p99, requests/s) against
   `agg-pipeline serve`, and the same question from raw for the speedup (bench_api.py).
10. fleet - the main set's readings a day over 100x the series (2,000 devices x 5 fields
   at 0.01 Hz), own databases, pipeline / floor (bench_scale.py; only with --only:
   `make bench-scale`);
11. curve - floor and pipeline per reading over a day, a week and the last complete month
   (the month with the monthly run and the floor's monthly median), own databases
   (bench_scale.py).

Absolute times on a shared machine drift; the ratios, measured in the same run, hold.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
import yaml

from agg_pipeline.config.catalogue import load_catalogue
from agg_pipeline.config.settings import PACKAGE_DIR, get_settings
from agg_pipeline.demo import readings as simulator
from agg_pipeline.warehouse import late_data, localdb, migrate
from benchmarks import bench_events, bench_heal, bench_influx, bench_scale

SECTIONS = (
    "floor",
    "pipeline",
    "parallel",
    "old_way",
    "backfill",
    "reads",
    "api",
    "pattern_writes",
    "influx_patterns",
    "incremental",
    "events",
    "healing",
    "fleet",
    "curve",
)
# Measured only when named in --only (it seeds and measures a data set of its own):
# `make bench-scale` runs it.
SCALE_SECTIONS = ("fleet",)
# The sections with data sets of their own: the main set is seeded only for the others.
OWN_DATA_SECTIONS = ("fleet", "curve")
BENCH_FIELDS = ("temperature", "humidity", "ph", "ec", "light")
TARGETS = {
    "pipeline_over_floor": ("<=", 1.5),
    "old_way_over_pipeline": (">=", 20.0),
    "backfill_overhead_pct": ("<=", 5.0),
    "read_speedup": (">=", 100.0),
    "read_p50_ms": ("<=", 10.0),
    "worker_peak_rss_mb": ("<=", 500.0),
    "pattern_write_1000_s": ("<", 1.0),
    "pattern_write_1000_influx_s": ("<", 1.0),
    **{f"influx_{k}": ("<", v) for k, v in bench_influx.TARGETS.items()},
    "heal_p95_s": ("<=", 300.0),
    "minute_p95_s": ("<=", 90.0),
    "heal_trials_wrong": ("<=", 0),
    "events_pipeline_over_floor": ("<=", 1.5),
    "events_old_way_over_pipeline": (">=", 20.0),
    "fleet_pipeline_over_floor": ("<=", 1.5),
    "fleet_worker_peak_rss_mb": ("<=", 500.0),
    "week_pipeline_over_floor": ("<=", 1.5),
    "month_pipeline_over_floor": ("<=", 1.5),
    "curve_worst_pipeline_over_floor": ("<=", 1.5),
    "curve_worker_peak_rss_mb": ("<=", 500.0),
}
RSS_TARGET_MB = TARGETS["worker_peak_rss_mb"][1]


def progress(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def median_of(fn: Callable[[], float], reps: int) -> tuple[float, list[float]]:
    samples = [fn() for _ in range(reps)]
    return statistics.median(samples), samples


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class BenchEnv:
    """Fresh databases for the warehouse and the Dagster instance, and a DAGSTER_HOME."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        settings = get_settings()
        tag = datetime.now().strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:4]
        if settings.database_url:
            server = sa.make_url(settings.database_url).set(database="postgres")
            self.server_url = server.render_as_string(hide_password=False)
        else:
            socket_dir = localdb.start(settings.home)
            self.server_url = localdb.url_for(socket_dir, "postgres")
        self.names = (f"aggbench_{tag}", f"aggbench_{tag}_dagster")
        for name in self.names:
            localdb.ensure_database(self.server_url, name)
        url = sa.make_url(self.server_url)
        self.warehouse_url = url.set(database=self.names[0]).render_as_string(False)
        self.dagster_url = url.set(database=self.names[1]).render_as_string(False)
        self.home = Path(tempfile.mkdtemp(prefix="aggbench_home_"))
        # The project's storage section (its pooled, batching storage: what a deployment
        # runs), without its run queue and monitoring (`dagster asset materialize` runs
        # in-process).
        project = yaml.safe_load((PACKAGE_DIR.parent / "dagster.yaml").read_text())
        (self.home / "dagster.yaml").write_text(
            yaml.safe_dump({"storage": project["storage"], "telemetry": {"enabled": False}})
        )
        self.engine = sa.create_engine(self.warehouse_url)

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "DATABASE_URL": self.warehouse_url,
            "DAGSTER_PG_URL": self.dagster_url,
            "DAGSTER_HOME": str(self.home),
            "PYTHONWARNINGS": "ignore",
        }
        env.update(extra)
        return env

    def close(self) -> None:
        self.engine.dispose()
        if self.keep:
            progress(f"kept databases {self.names} on {self.server_url}")
            return
        admin = sa.create_engine(self.server_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for name in self.names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run_dagster(
    env: BenchEnv,
    module: str,
    select: str,
    partition_args: list[str],
    extra_env: dict[str, str] | None = None,
) -> dict:
    """One real run in its own process; wall time and the worker's peak RSS."""
    dagster = str(Path(sys.executable).parent / "dagster")
    argv = [dagster, "asset", "materialize", "-m", module, "--select", select, *partition_args]
    # stderr to a file, not a pipe: a run logs more than a pipe buffer holds, and an unread
    # pipe would block the child.
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            env=env.env(**(extra_env or {})),
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=PACKAGE_DIR.parent,
        )
        hwm_kb, status, usage = 0, 0, None
        while usage is None:
            hwm_kb = max(hwm_kb, _vm_hwm_kb(proc.pid))
            pid, status, got = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                usage = got
            else:
                time.sleep(0.05)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"{' '.join(argv[2:])} failed:\n{tail}")
    # The worker's own high-water mark (VmHWM, polled while it runs). wait4's ru_maxrss is
    # not it: Popen starts the child with vfork, and exec carries the bench process's own
    # peak into the child's maxrss (every run showed the seeding's 282 MB). Kept beside it.
    return {
        "seconds": seconds,
        "peak_rss_mb": hwm_kb / 1024 if hwm_kb else usage.ru_maxrss / 1024,
        "rusage_maxrss_mb": usage.ru_maxrss / 1024,
    }


def _vm_hwm_kb(pid: int) -> int:
    """The process's peak resident set since its exec, from /proc (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


_STEP_TIMES = """
SELECT step_key,
       extract(epoch FROM max(timestamp) FILTER (WHERE dagster_event_type IN
           ('STEP_SUCCESS', 'STEP_FAILURE'))
         - min(timestamp) FILTER (WHERE dagster_event_type = 'STEP_START')) AS seconds
FROM event_logs
WHERE run_id = (SELECT run_id FROM runs ORDER BY id DESC LIMIT 1) AND step_key IS NOT NULL
GROUP BY step_key ORDER BY 2 DESC NULLS LAST
"""


def last_run_steps(env: BenchEnv) -> dict[str, float]:
    """Each step's wall time in the instance's newest run (its STEP_START to its end), from
    the Dagster database: where a run's seconds went beyond start-up."""
    engine = sa.create_engine(env.dagster_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(_STEP_TIMES)).all()
    finally:
        engine.dispose()
    return {key: round(float(sec), 2) for key, sec in rows if sec is not None}


def sql_time(engine: sa.Engine, sql: str, params: dict, work_mem: str = "256MB") -> float:
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT set_config('work_mem', :v, true)"), {"v": work_mem})
        start = time.perf_counter()
        conn.execute(sa.text(sql), params)
        return time.perf_counter() - start


# --------------------------------------------------------------------------------------


_FLOOR_MEDIAN = (
    "CREATE TEMP TABLE floor_{name} ON COMMIT DROP AS "
    "SELECT device, field, {bucket} AS bucket, "
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY value) AS median FROM raw.readings "
    "WHERE time >= :s AND time < :e GROUP BY 1, 2, 3"
)
# The grains the graph keeps exact medians for, each one plain GROUP BY over raw (the
# floor of issue 15): hours, (UTC) days, ISO weeks.
FLOOR_MEDIANS = {
    "hourly_median": "date_trunc('hour', time)",
    "daily_median": "(time AT TIME ZONE 'UTC')::date",
    "weekly_median": "date_trunc('week', (time AT TIME ZONE 'UTC')::date)::date",
    "monthly_median": "date_trunc('month', (time AT TIME ZONE 'UTC')::date)::date",
}


def measure_floor(env: BenchEnv, start: datetime, end: datetime, reps: int) -> dict:
    """What PostgreSQL itself needs for the same answers: the 1-minute partials and the
    exact hourly, daily and (when the data holds a whole week) weekly medians, four plain
    GROUP BY statements over raw, each into a temp table (so nothing is pruned); and the
    monthly medians of the whole months the data holds (the monthly run's partitions),
    over those months only."""
    params = {"s": start, "e": end}
    months = closed_months(start, end)
    statements_ = {
        "partials_1m": (
            "CREATE TEMP TABLE floor_1m ON COMMIT DROP AS "
            "SELECT device, field, date_bin('1 minute', time, :s) AS w, count(*) AS n, "
            "avg(value) AS mean, min(value) AS mn, max(value) AS mx, var_samp(value) AS var, "
            "min(time) AS t0, max(time) AS t1 FROM raw.readings "
            "WHERE time >= :s AND time < :e GROUP BY 1, 2, 3"
        ),
        **{
            name: _FLOOR_MEDIAN.format(name=name, bucket=bucket)
            for name, bucket in FLOOR_MEDIANS.items()
            if {"weekly_median": closed_weeks(start, end), "monthly_median": months}.get(name, True)
        },
    }
    out: dict = {"samples": {}}
    for name, sql in statements_.items():
        where = params
        if name == "monthly_median":
            where = {"s": _utc(months[0]), "e": _utc(_next_month(months[-1]))}
        value, samples = median_of(
            lambda sql=sql, where=where: sql_time(env.engine, sql, where), reps
        )
        out[f"{name}_s"] = value
        out["samples"][name] = samples
    out["total_s"] = sum(out[f"{name}_s"] for name in statements_)
    return out


def closed_weeks(start: datetime, end: datetime) -> list[date]:
    """The Mondays of the weeks a Sunday in the data [start, end) closes (the weekly
    run's partitions; a week the data holds only part of is still one)."""
    weeks = []
    day = start.date()
    while day < end.date():
        if day.weekday() == 6:
            weeks.append(day - timedelta(days=6))
        day += timedelta(days=1)
    return weeks


def _utc(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC)


def _next_month(first: date) -> date:
    return (first.replace(day=28) + timedelta(days=4)).replace(day=1)


def closed_months(start: datetime, end: datetime) -> list[date]:
    """The 1sts of the (UTC, as the floor's days) months wholly inside [start, end): the
    monthly run's partitions (its median reads the month's raw readings, so a month the
    data holds only part of would not be the month's answer)."""
    months = []
    first = start.date().replace(day=1)
    if first < start.date() or start != _utc(start.date()):
        first = _next_month(first)
    while _utc(_next_month(first)) <= end:
        months.append(first)
        first = _next_month(first)
    return months


def pipeline_runs(start: datetime, end: datetime) -> list[tuple[str, list[str]]]:
    """The runs a backfill of the whole graph over [start, end) launches."""
    last_hour = end - timedelta(hours=1)
    last_day = (end - timedelta(days=1)).date()
    runs = [
        (
            "readings_1m,readings_5m,rollup_hourly,device_performance_hourly",
            ["--partition-range", f"{start:%Y-%m-%d-%H:00}...{last_hour:%Y-%m-%d-%H:00}"],
        ),
        (
            "rollup_daily,conditions_daily,diagnostic_summary_daily",
            ["--partition-range", f"{start:%Y-%m-%d}...{last_day:%Y-%m-%d}"],
        ),
    ]
    weeks = closed_weeks(start, end)
    if weeks:
        runs.append(
            (
                "rollup_weekly",
                ["--partition-range", f"{weeks[0]:%Y-%m-%d}...{weeks[-1]:%Y-%m-%d}"],
            )
        )
    months = closed_months(start, end)
    if months:  # the same way as the weekly run, one run over the whole months
        runs.append(
            (
                "rollup_monthly",
                ["--partition-range", f"{months[0]:%Y-%m-%d}...{months[-1]:%Y-%m-%d}"],
            )
        )
    return runs


def measure_pipeline(
    env: BenchEnv, start: datetime, end: datetime, reps: int, extra_env: dict[str, str]
) -> dict:
    def once() -> tuple[float, float, list[dict]]:
        total, rss, runs = 0.0, 0.0, []
        for select, args in pipeline_runs(start, end):
            result = run_dagster(env, "agg_pipeline.definitions", select, args, extra_env)
            runs.append({"assets": select, **result, "steps_s": last_run_steps(env)})
            total += result["seconds"]
            rss = max(rss, result["peak_rss_mb"])
        return total, rss, runs

    samples = [once() for _ in range(reps)]
    best = sorted(samples, key=lambda s: s[0])[len(samples) // 2]
    return {
        "total_s": best[0],
        "worker_peak_rss_mb": max(s[1] for s in samples),
        "runs": best[2],
        "samples_s": [s[0] for s in samples],
        "env": extra_env,
    }


def _launch(env: BenchEnv, select: str, partition_args: list[str]) -> subprocess.Popen:
    dagster = str(Path(sys.executable).parent / "dagster")
    argv = [dagster, "asset", "materialize", "-m", "agg_pipeline.definitions", "--select"]
    return subprocess.Popen(
        [*argv, select, *partition_args],
        env=env.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=PACKAGE_DIR.parent,
    )


def measure_parallel(env: BenchEnv, start: datetime, end: datetime, runs: int) -> dict:
    """The hourly run of the window as one run, then split into ``runs`` runs of whole days
    launched at once: what BackfillPolicy.multi_run with that many runs in flight gives on
    this machine (the per-day advisory locks never meet: the ranges are disjoint)."""
    select, args = pipeline_runs(start, end)[0]
    one = run_dagster(env, "agg_pipeline.definitions", select, args)["seconds"]
    days = max(1, int((end - start).total_seconds() // 86400))
    cuts = [start + timedelta(days=days * k // runs) for k in range(runs)] + [end]
    ranges = [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
    began = time.perf_counter()
    procs = [
        _launch(
            env,
            select,
            ["--partition-range", f"{a:%Y-%m-%d-%H:00}...{b - timedelta(hours=1):%Y-%m-%d-%H:00}"],
        )
        for a, b in ranges
    ]
    codes = [p.wait() for p in procs]
    split = time.perf_counter() - began
    if any(codes):
        raise RuntimeError(f"a parallel run failed: exit codes {codes}")
    return {
        "runs": len(ranges),
        "one_run_s": one,
        "concurrent_runs_s": split,
        "speedup": one / split,
        "assets": select,
    }


def parallel_result(r: dict) -> dict | None:
    """The parallel section's figures: the main set's, else the curve's week's."""
    if r.get("parallel"):
        return r["parallel"]
    for point in ((r.get("curve") or {}).get("points") or {}).values():
        if point.get("parallel"):
            return point["parallel"]
    return None


def measure_old_way(env: BenchEnv, start: datetime, end: datetime, sample_hours: int) -> dict:
    hours = int((end - start).total_seconds() // 3600)
    step = max(1, hours // sample_hours)
    picked = [start + timedelta(hours=h) for h in range(0, hours, step)][:sample_hours]
    seconds = [
        run_dagster(
            env, "benchmarks.bench_defs", "old_way_hourly", ["--partition", f"{h:%Y-%m-%d-%H:00}"]
        )["seconds"]
        for h in picked
    ]
    per_hour = statistics.median(seconds)
    return {
        "sampled_hours": [f"{h:%Y-%m-%d %H:00}" for h in picked],
        "per_hour_s": per_hour,
        "samples_s": seconds,
        "hours": hours,
        "total_s_scaled": per_hour * hours,
        "note": f"{len(picked)} of {hours} hourly runs measured, total scaled by {hours}",
    }


def measure_backfill(env: BenchEnv, partitions: int, sample_runs: int) -> dict:
    from benchmarks.bench_defs import trivial_partitions

    keys = trivial_partitions.get_partition_keys()[-partitions:]
    batch = run_dagster(
        env,
        "benchmarks.bench_defs",
        "trivial_hourly",
        ["--partition-range", f"{keys[0]}...{keys[-1]}"],
    )["seconds"]
    single = [
        run_dagster(env, "benchmarks.bench_defs", "trivial_hourly", ["--partition", keys[i]])[
            "seconds"
        ]
        for i in range(sample_runs)
    ]
    per_run = statistics.median(single)
    per_partition_batch = batch / len(keys)
    return {
        "partitions": len(keys),
        "one_run_s": batch,
        "per_partition_in_one_run_s": per_partition_batch,
        "run_per_partition_s": per_run,
        "run_per_partition_total_s_scaled": per_run * len(keys),
        "overhead_pct": 100.0 * per_partition_batch / per_run,
        "note": f"{sample_runs} single-partition runs measured, scaled to {len(keys)}",
    }


READS = {
    "hourly_24h_one_sensor": (
        "SELECT hour_start, avg_value, min_value, max_value, sample_count, stddev_value, "
        "median_value FROM bi.hourly_sensor_agg WHERE sensor_id = :sensor_id "
        "AND hour_start >= :s AND hour_start < :e ORDER BY hour_start",
        "SELECT date_trunc('hour', time), avg(value), min(value), max(value), count(*), "
        "stddev(value), percentile_cont(0.5) WITHIN GROUP (ORDER BY value) FROM raw.readings "
        "WHERE device = :device AND field = :field AND time >= :s AND time < :e "
        "AND value BETWEEN :lo AND :hi GROUP BY 1 ORDER BY 1",
    ),
    "daily_30d_one_sensor": (
        "SELECT metric_date, avg_value, min_value, max_value, sample_count, stddev_value, "
        "median_value, time_in_optimal_pct FROM bi.daily_sensor_agg "
        "WHERE sensor_id = :sensor_id AND metric_date >= :d0 AND metric_date < :d1 "
        "ORDER BY metric_date",
        "SELECT (time AT TIME ZONE 'UTC')::date, avg(value), min(value), max(value), count(*), "
        "stddev(value), percentile_cont(0.5) WITHIN GROUP (ORDER BY value) FROM raw.readings "
        "WHERE device = :device AND field = :field AND time >= :s30 AND time < :e "
        "AND value BETWEEN :lo AND :hi GROUP BY 1 ORDER BY 1",
    ),
    "latest_all_sensors": (
        "SELECT s.id, w.window_start, w.mean_value FROM iot.sensors AS s "
        "CROSS JOIN LATERAL (SELECT window_start, mean_value FROM bi.readings_1m AS r "
        "WHERE r.sensor_id = s.id ORDER BY window_start DESC LIMIT 1) AS w",
        "SELECT DISTINCT ON (device, field) device, field, time, value FROM raw.readings "
        "WHERE time >= :s AND time < :e ORDER BY device, field, time DESC",
    ),
    "ranking_all_devices": (
        "SELECT dv.device_code, avg(a.avg_value) AS v FROM bi.daily_sensor_agg AS a "
        "JOIN iot.sensors AS s ON s.id = a.sensor_id JOIN iot.devices AS dv "
        "ON dv.id = s.device_id WHERE s.field = :field AND a.metric_date >= :d0 "
        "AND a.metric_date < :d1 GROUP BY 1 ORDER BY v DESC",
        "SELECT device, avg(value) AS v FROM raw.readings WHERE field = :field "
        "AND time >= :s AND time < :e AND value BETWEEN :lo AND :hi GROUP BY 1 ORDER BY v DESC",
    ),
}


_RAW_DEVICE_HOURS = (
    "SELECT date_trunc('hour', time) AS hour, "
    "avg(value) FILTER (WHERE field = 'temperature') AS t, "
    "avg(value) FILTER (WHERE field = 'humidity') AS h, "
    "avg(value) FILTER (WHERE field = 'ph') AS ph, avg(value) FILTER (WHERE field = 'ec') AS ec "
    "FROM raw.readings WHERE time >= :s AND time < :e AND value BETWEEN 0 AND 100 "
    "AND value <> 'NaN' {device} GROUP BY {group} ORDER BY 1"
)
# From raw, the dashboard questions the old continuous aggregates were built to avoid.
DASHBOARD_RAW = {
    "dash_hourly_for_device": READS["hourly_24h_one_sensor"][1]
    .replace("AND field = :field ", "")
    .replace("GROUP BY 1 ORDER BY 1", "GROUP BY 1, field ORDER BY 1"),
    "dash_daily_for_device": READS["daily_30d_one_sensor"][1]
    .replace("AND field = :field ", "")
    .replace("GROUP BY 1 ORDER BY 1", "GROUP BY 1, field ORDER BY 1"),
    "dash_performance_for_device": _RAW_DEVICE_HOURS.format(
        device="AND device = :device", group="1"
    ),
    "dash_diagnostics_summary": (
        "SELECT device, (time AT TIME ZONE 'UTC')::date, severity, diagnosis_type, count(*), "
        "avg(confidence) FROM raw.diagnostics WHERE time >= :s7 AND time < :e "
        "AND confidence BETWEEN 0 AND 1 GROUP BY 1, 2, 3, 4"
    ),
    "dash_all_devices_performance": _RAW_DEVICE_HOURS.format(device="", group="1, 2").replace(
        "SELECT date_trunc", "SELECT device, date_trunc"
    ),
    "dash_ranking_by_vpd": _RAW_DEVICE_HOURS.format(device="", group="1, 2").replace(
        "SELECT date_trunc", "SELECT device, date_trunc"
    ),
    "dash_ranking_by_health": _RAW_DEVICE_HOURS.format(device="", group="1, 2").replace(
        "SELECT date_trunc", "SELECT device, date_trunc"
    ),
}


def measure_reads(env: BenchEnv, start: datetime, end: datetime, reps: int) -> dict:
    from agg_pipeline.serving import dashboard

    catalogue = load_catalogue("hydroponics")
    with env.engine.connect() as conn:
        sensor_id, device, field = conn.execute(
            sa.text(
                "SELECT s.id, dv.device_code, s.field FROM iot.sensors s JOIN iot.devices dv "
                "ON dv.id = s.device_id WHERE s.field = 'temperature' ORDER BY s.id LIMIT 1"
            )
        ).one()
    spec = catalogue.fields[field]
    day_end = end
    params = {
        "sensor_id": sensor_id,
        "device": device,
        "field": field,
        "lo": spec.min,
        "hi": spec.max,
        "s": day_end - timedelta(days=1),
        "e": day_end,
        "s7": day_end - timedelta(days=7),
        "s30": day_end - timedelta(days=30),
        "d0": (day_end - timedelta(days=30)).date(),
        "d1": day_end.date(),
    }
    e, today = env.engine, day_end.date()
    helpers = {
        "dash_hourly_for_device": lambda: dashboard.hourly_for_device(e, device, 24, now=day_end),
        "dash_daily_for_device": lambda: dashboard.daily_for_device(e, device, 30, today=today),
        "dash_performance_for_device": lambda: dashboard.performance_for_device(
            e, device, 24, now=day_end
        ),
        "dash_diagnostics_summary": lambda: dashboard.diagnostics_summary(e, 7, today=today),
        "dash_all_devices_performance": lambda: dashboard.all_devices_performance(
            e, 24, now=day_end
        ),
        "dash_ranking_by_vpd": lambda: dashboard.ranking(e, "vpd", 24, now=day_end),
        "dash_ranking_by_health": lambda: dashboard.ranking_by_health(e, 24, now=day_end),
    }
    out = {}

    def stats(name: str, rollup: list[float], raw: list[float]) -> None:
        out[name] = {
            "rollup_p50_ms": percentile(rollup, 0.5),
            "rollup_p95_ms": percentile(rollup, 0.95),
            "raw_p50_ms": percentile(raw, 0.5),
            "raw_p95_ms": percentile(raw, 0.95),
            "speedup": percentile(raw, 0.5) / percentile(rollup, 0.5),
        }

    raw_reps = max(3, reps // 20)
    with env.engine.connect() as conn:
        for name, (rollup_sql, raw_sql) in READS.items():
            rollup = [
                timed(lambda q=rollup_sql: conn.execute(sa.text(q), params).all()) * 1000
                for _ in range(reps)
            ]
            raw = [
                timed(lambda q=raw_sql: conn.execute(sa.text(q), params).all()) * 1000
                for _ in range(raw_reps)
            ]
            stats(name, rollup, raw)
        for name, helper in helpers.items():
            rollup = [timed(helper) * 1000 for _ in range(reps)]
            raw = [
                timed(lambda q=DASHBOARD_RAW[name]: conn.execute(sa.text(q), params).all()) * 1000
                for _ in range(raw_reps)
            ]
            stats(name, rollup, raw)
    speedups = [q["speedup"] for q in out.values()]
    return {
        "queries": out,
        "speedup_geomean": math.exp(sum(math.log(s) for s in speedups) / len(speedups)),
        "worst_rollup_p50_ms": max(q["rollup_p50_ms"] for q in out.values()),
        "note": "dashboard helpers (dash_*) include validation and a fresh pooled "
        "connection per call; raw equivalents compute the same from raw rows",
    }


def measure_pattern_writes(env: BenchEnv, reps: int) -> dict:
    try:
        from agg_pipeline.serving.patterns import bench_write_batch  # the pattern-aggregates issue
    except ImportError:
        return {"note": "pattern aggregates not implemented yet: not measured"}
    result = bench_write_batch(env.engine, n=1000, reps=reps)
    result.update(measure_influx_pattern_writes(1000, reps))
    return result


def measure_influx_pattern_writes(n: int, reps: int) -> dict:
    """1000 pattern aggregates as line protocol through influxdb-client (gzip, one batch
    per detector) to a local HTTP endpoint that accepts writes like InfluxDB (204): our
    client-side cost plus HTTP, not InfluxDB's ingestion."""
    import gzip
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from agg_pipeline.influx import sink as influx_sink
    from agg_pipeline.influx.client import InfluxResource
    from agg_pipeline.serving import patterns

    received: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            received.append(body.count(b"\n") + 1)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        influx = InfluxResource(
            url=f"http://127.0.0.1:{server.server_address[1]}", token="bench", org="bench"
        )
        by_detector: dict[str, list[dict]] = {}
        for a in patterns.sample_aggregates(n):
            name = next(k for k, d in patterns.DETECTORS.items() if isinstance(a, d.model))
            by_detector.setdefault(name, []).append(a.model_dump())

        def once() -> float:
            start = time.perf_counter()
            for name, rows in by_detector.items():
                det = patterns.DETECTORS[name]
                influx.write_lines("pattern_aggregates_daily", influx_sink.pattern_lines(det, rows))
            return time.perf_counter() - start

        seconds = [once() for _ in range(reps)]
    finally:
        server.shutdown()
    return {
        "influx_line_protocol_s": statistics.median(seconds),
        "influx_points_received": sum(received) // reps,
    }


def measure_incremental(env: BenchEnv, day_start: datetime, devices: int, hz: float) -> dict:
    """The minute job on a fresh open hour, and a late-data correction of hour + day."""
    catalogue = load_catalogue("hydroponics")
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    spec = simulator.SimulationSpec(
        start=hour,
        days=max((now - hour).total_seconds(), 60) / 86400,
        devices=devices,
        hz=hz,
        seed=9,
        fields=BENCH_FIELDS,
    )
    simulator.write(env.engine, catalogue, spec)
    open_hour = run_dagster(
        env, "agg_pipeline.definitions", "readings_1m", ["--partition", f"{hour:%Y-%m-%d-%H:00}"]
    )
    late_hour = day_start + timedelta(hours=10)
    with env.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO raw.readings (time, device, field, value) "
                "SELECT :t + make_interval(secs => g), 'arduino_001', 'temperature', 21.5 "
                "FROM generate_series(0, 59) AS g"
            ),
            {"t": late_hour + timedelta(minutes=17, milliseconds=500)},
        )
    hourly = run_dagster(
        env,
        "agg_pipeline.definitions",
        "readings_1m,readings_5m,rollup_hourly",
        ["--partition", f"{late_hour:%Y-%m-%d-%H:00}"],
    )
    daily = run_dagster(
        env,
        "agg_pipeline.definitions",
        "rollup_daily,conditions_daily",
        ["--partition", f"{day_start:%Y-%m-%d}"],
    )
    return {
        "open_hour_refresh_s": open_hour["seconds"],
        "late_hour_s": hourly["seconds"],
        "late_day_s": daily["seconds"],
        "late_correction_total_s": hourly["seconds"] + daily["seconds"],
    }


# --------------------------------------------------------------------------------------


def seed(
    env: BenchEnv,
    start: datetime,
    days: float,
    devices: int,
    hz: float,
    duplicate_rate: float | None = None,
) -> tuple[int, simulator.SimulationSpec]:
    """Migrate ``env``'s warehouse and write the bench's readings (devices x BENCH_FIELDS at
    hz from start) and diagnostics; return the reading count and the spec."""
    progress(f"databases {env.names}; migrating")
    migrate.migrate(env.engine)
    simulator.write_demo_crops(env.engine)  # as before: conditions against the demo batch
    progress(f"seeding {devices} devices x {len(BENCH_FIELDS)} fields at {hz:g} Hz, {days:g} d")
    spec = simulator.SimulationSpec(
        start=start,
        days=days,
        devices=devices,
        hz=hz,
        seed=42,
        fields=BENCH_FIELDS,
        **({} if duplicate_rate is None else {"duplicate_rate": duplicate_rate}),
    )
    catalogue = load_catalogue("hydroponics")
    readings = simulator.write(env.engine, catalogue, spec)
    simulator.write_diagnostics(env.engine, catalogue, start, days, devices)
    # The seeding's change-log entries become raw versions, as the healer's next tick would
    # make them (a deployment's daemon drains the log every 30 s).
    late_data.drain(env.engine, start - timedelta(days=1), timedelta(0))
    with env.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE raw.readings"))
    return readings, spec


def machine() -> dict:
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "memory_gb": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def ratios(r: dict) -> dict:
    floor, pipeline = r.get("floor"), r.get("pipeline")
    old_way, pw = r.get("old_way"), r.get("pattern_writes") or {}
    out = {
        "pipeline_over_floor": pipeline["total_s"] / floor["total_s"]
        if floor and pipeline
        else None,
        "old_way_over_pipeline": old_way["total_s_scaled"] / pipeline["total_s"]
        if old_way and pipeline
        else None,
        "backfill_overhead_pct": (r.get("backfill") or {}).get("overhead_pct"),
        "read_speedup": (r.get("reads") or {}).get("speedup_geomean"),
        "read_p50_ms": (r.get("reads") or {}).get("worst_rollup_p50_ms"),
        "worker_peak_rss_mb": pipeline["worker_peak_rss_mb"] if pipeline else None,
        "pattern_write_1000_s": pw.get("postgres_s"),
        "pattern_write_1000_influx_s": pw.get("influx_line_protocol_s"),
    }
    for key, value in (r.get("influx_patterns") or {}).get("figures", {}).items():
        out[f"influx_{key}"] = value
    par = parallel_result(r)
    if par:
        out["parallel_backfill_speedup"] = par["speedup"]
    exact = r.get("pipeline_exact_1m")
    if exact and floor:
        out["pipeline_exact_1m_over_floor"] = exact["total_s"] / floor["total_s"]
    healing = r.get("healing") or {}
    out["heal_p95_s"] = healing.get("heal_p95_s")
    out["minute_p95_s"] = healing.get("minute_p95_s")
    out["heal_trials_wrong"] = healing.get("trials_wrong")
    events = r.get("events") or {}
    out["events_pipeline_over_floor"] = events.get("pipeline_over_floor")
    out["events_old_way_over_pipeline"] = events.get("old_way_over_pipeline")
    out["events_graph_sql_over_floor"] = events.get("graph_sql_over_floor")  # no Dagster
    out.update(bench_scale.ratios(r))
    return out


def verdicts(ratios_: dict) -> dict:
    out = {}
    for name, (op, target) in TARGETS.items():
        value = ratios_.get(name)
        if value is None:
            out[name] = "not measured"
            continue
        met = {"<=": value <= target, ">=": value >= target, "<": value < target}[op]
        out[name] = "met" if met else "MISSED"
    return out


def render(result: dict) -> str:
    r, v = result["ratios"], result["verdicts"]
    d = result["dataset"]
    main_set = (
        f"{d['readings']:,} readings ({d['devices']} devices x {len(d['fields'])} fields at "
        f"{d['hz']:g} Hz, {d['days']:g} day(s))"
        if d["readings"]
        else "scale sections only (no main data set)"
    )
    lines = [
        f"agg_pipeline benchmark - {main_set}, {result['machine']['cpus']} CPUs",
        "",
        f"{'measure':<44}{'value':>14}  target   verdict",
    ]

    def row(label: str, key: str, fmt: str) -> None:
        value = r.get(key)
        op, target = TARGETS[key]
        shown = "-" if value is None else format(value, fmt)
        lines.append(f"{label:<44}{shown:>14}  {op}{target:<6g} {v[key]}")

    row("pipeline / floor", "pipeline_over_floor", ".2f")
    row("old way / pipeline", "old_way_over_pipeline", ".1f")
    row("backfill per-partition overhead (%)", "backfill_overhead_pct", ".2f")
    row("read speedup, rollups vs raw (geomean)", "read_speedup", ".0f")
    row("read p50, worst dashboard query (ms)", "read_p50_ms", ".2f")
    row("run worker peak RSS (MB)", "worker_peak_rss_mb", ".0f")
    row("1000 pattern aggregates, one batch (s)", "pattern_write_1000_s", ".3f")
    row("1000 pattern aggregates, line protocol (s)", "pattern_write_1000_influx_s", ".3f")
    for key in bench_influx.TARGETS:  # the old PatternAggregateClient's criteria
        row(f"pattern bucket {key.removesuffix('_s')} (s)", f"influx_{key}", ".3f")
    row("late reading -> hour, day, week exact p95 (s)", "heal_p95_s", ".0f")
    row("reading -> final 1m window p95 (s)", "minute_p95_s", ".0f")
    row("heal trials ending in a wrong state", "heal_trials_wrong", "d")
    row("events: graph / floor", "events_pipeline_over_floor", ".2f")
    row("events: old way / graph", "events_old_way_over_pipeline", ".1f")
    row("fleet: pipeline / floor", "fleet_pipeline_over_floor", ".2f")
    row("fleet: run worker peak RSS (MB)", "fleet_worker_peak_rss_mb", ".0f")
    row("a week (curve): pipeline / floor", "week_pipeline_over_floor", ".2f")
    row("a month (curve): pipeline / floor", "month_pipeline_over_floor", ".2f")
    row("curve: worst pipeline / floor", "curve_worst_pipeline_over_floor", ".2f")
    row("curve: run worker peak RSS (MB)", "curve_worker_peak_rss_mb", ".0f")
    f, p = result.get("floor"), result.get("pipeline")
    o, b = result.get("old_way"), result.get("backfill")
    lines.append("")
    if f:
        lines.append(
            "floor: "
            + " + ".join(
                f"{name} {f[name + '_s']:.2f} s"
                for name in ("partials_1m", *FLOOR_MEDIANS)
                if name + "_s" in f
            )
            + f" = {f['total_s']:.2f} s"
        )
    if result.get("interleaved_ratios"):
        lines.append(f"pipeline / floor per interleaved pair: {result['interleaved_ratios']}")
    if p:
        lines.append(
            "pipeline: "
            + " + ".join(f"{x['assets'].split(',')[0]}.. {x['seconds']:.2f} s" for x in p["runs"])
            + f" = {p['total_s']:.2f} s"
        )
        lines += run_lines(p["runs"])
    pe = result.get("pipeline_exact_1m")
    if pe and f:
        lines.append(
            f"pipeline, exact 1m path only (AGG_PIPELINE_PLAIN_1M=false): {pe['total_s']:.2f} s "
            f"= {pe['total_s'] / f['total_s']:.2f}x the floor"
        )
        lines += run_lines(pe["runs"])
    par = parallel_result(result)
    if par:
        lines.append(
            f"parallel backfill ({par.get('on', 'the main set')}): hourly run "
            f"{par['one_run_s']:.2f} s as one run, "
            f"{par['concurrent_runs_s']:.2f} s as {par['runs']} concurrent runs "
            f"(speedup {par['speedup']:.2f}x)"
        )
    if o:
        lines.append(
            f"old way: {o['per_hour_s']:.2f} s per hourly run x {o['hours']} = "
            f"{o['total_s_scaled']:.1f} s ({o['note']})"
        )
    if b:
        lines.append(
            f"backfill: {b['partitions']} partitions in one run {b['one_run_s']:.1f} s "
            f"({b['per_partition_in_one_run_s'] * 1000:.1f} ms each) vs "
            f"{b['run_per_partition_s']:.2f} s per single-partition run"
        )
    for name, q in (result.get("reads") or {}).get("queries", {}).items():
        lines.append(
            f"read {name}: rollup p50 {q['rollup_p50_ms']:.2f} ms / p95 "
            f"{q['rollup_p95_ms']:.2f} ms, raw p50 {q['raw_p50_ms']:.0f} ms "
            f"({q['speedup']:.0f}x)"
        )
    pw = result.get("pattern_writes")
    if pw:
        lines.append(
            "pattern writes: "
            + (pw["note"] if "note" in pw and "postgres_s" not in pw else json.dumps(pw))
        )
    if result.get("influx_patterns"):
        lines += bench_influx.render(result["influx_patterns"])
    i = result.get("incremental")
    if i:
        lines.append(
            f"incremental: open hour refresh {i['open_hour_refresh_s']:.2f} s; late reading -> "
            f"hour {i['late_hour_s']:.2f} s + day {i['late_day_s']:.2f} s"
        )
    if result.get("events"):
        lines += bench_events.render(result["events"])
    if result.get("api"):
        from benchmarks import bench_api  # (imported here: keeps bench.py's imports as main's)

        lines.append(bench_api.render(result["api"]))
    h = result.get("healing")
    if h:
        lines.append(
            f"healing through the daemon: first fill {h['first_fill_s']} s; {h['trials']} trials, "
            f"heal p50 {h['heal_p50_s']} s (per level p50 {h['heal_by_level_p50_s']}); "
            f"{h['minutes_timed']} minutes timed, p50 {h['minute_p50_s']} s, max "
            f"{h['minute_max_s']} s ({h['hour_end_minutes_timed']} last minutes of an hour)"
        )
    lines += bench_scale.render(result)
    return "\n".join(lines)


def run_lines(runs: list[dict]) -> list[str]:
    """One line per Dagster run: its seconds, its worker's peak RSS against the target,
    and its steps."""
    out = []
    for x in runs:
        rss = x["peak_rss_mb"]
        verdict = "met" if rss <= RSS_TARGET_MB else "MISSED"
        steps = ", ".join(f"{k} {v:.2f} s" for k, v in x.get("steps_s", {}).items())
        out.append(
            f"  {x['assets'].split(',')[0]} run {x['seconds']:.2f} s, peak RSS {rss:.0f} MB "
            f"(<={RSS_TARGET_MB:g} {verdict}): {steps}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--days", type=float, default=1.0)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--hz", type=float, default=1.0)
    parser.add_argument("--start", type=date.fromisoformat, help="first day (default: yesterday)")
    parser.add_argument(
        "--duplicate-rate",
        type=float,
        help="share of readings the simulator writes twice (default: the simulator's, 2e-4)",
    )
    parser.add_argument(
        "--plain-1m",
        choices=("setting", "on", "off", "both"),
        default="setting",
        help="the pipeline's 1-minute pass (AGG_PIPELINE_PLAIN_1M; default: as set); both: "
        "measure the pipeline twice in this run, exact path first",
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the costly steps")
    parser.add_argument("--read-reps", type=int, default=60)
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="measure floor and pipeline alternately, --reps pairs; the ratio is the median "
        "pair's (for a shared machine whose load changes within a run)",
    )
    parser.add_argument(
        "--parallel-runs", type=int, default=2, help="concurrent runs in the parallel section"
    )
    parser.add_argument("--old-way-hours", type=int, default=3)
    parser.add_argument("--backfill-partitions", type=int, default=2160)
    parser.add_argument("--backfill-sample-runs", type=int, default=3)
    parser.add_argument(
        "--heal-trials", type=int, default=5, help="late-data trials through the daemon (0: skip)"
    )
    parser.add_argument(
        "--event-executions", type=int, default=5_000_000, help="event metrics (0: skip)"
    )
    parser.add_argument("--event-days", type=float, default=30.0)
    parser.add_argument("--event-workspaces", type=int, default=200)
    parser.add_argument("--event-users", type=int, default=2000)
    parser.add_argument("--event-old-way-hours", type=int, default=3)
    parser.add_argument(
        "--api-requests", type=int, default=640, help="HTTP API requests per endpoint (0: skip)"
    )
    parser.add_argument(
        "--only",
        type=lambda v: set(v.split(",")),
        default=set(SECTIONS) - set(SCALE_SECTIONS),
        help=f"comma-separated sections to measure: {','.join(SECTIONS)} (default all but "
        f"{','.join(SCALE_SECTIONS)}, which `make bench-scale` runs)",
    )
    bench_scale.add_arguments(parser)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark databases")
    args = parser.parse_args(argv)
    unknown = args.only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    want = args.only.__contains__
    if want("curve"):
        bench_scale.check_arguments(parser, args)

    first = args.start or (datetime.now(UTC).date() - timedelta(days=math.ceil(args.days)))
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    end = start + timedelta(days=args.days)
    env = BenchEnv(args.keep)
    try:
        # The main data set serves every section but the scale ones (own databases each).
        readings, spec = 0, None
        if args.only - set(OWN_DATA_SECTIONS):
            readings, spec = seed(env, start, args.days, args.devices, args.hz, args.duplicate_rate)
        result: dict = {
            "dataset": {
                "readings": readings,
                "devices": args.devices,
                "fields": list(BENCH_FIELDS),
                "hz": args.hz,
                "days": args.days,
                "start": start.isoformat(),
                "duplicate_rate": spec.duplicate_rate if spec else None,
            },
            "machine": machine(),
        }
        if args.interleave and (want("floor") or want("pipeline")):
            # Floor, pipeline, floor, pipeline, ...: each ratio from neighbours in time, so
            # a load change on a shared machine moves both sides of it.
            pairs = []
            for rep in range(args.reps):
                progress(f"interleaved {rep + 1}/{args.reps}: floor, then pipeline")
                floor = measure_floor(env, start, end, 1)
                pipeline = measure_pipeline(env, start, end, 1, {})
                pairs.append((pipeline["total_s"] / floor["total_s"], floor, pipeline))
            pairs.sort(key=lambda x: x[0])
            _, result["floor"], result["pipeline"] = pairs[len(pairs) // 2]
            result["interleaved_ratios"] = [round(x[0], 3) for x in pairs]
        if want("floor") and not args.interleave:
            progress("floor: bare 1m GROUP BY and hourly / daily / weekly percentile_cont")
            result["floor"] = measure_floor(env, start, end, args.reps)
        if want("pipeline") and not args.interleave:
            modes = {
                "setting": [None],
                "on": ["true"],
                "off": ["false"],
                "both": ["false", "true"],
            }[args.plain_1m]
            for mode in modes:
                progress(
                    f"pipeline: whole graph through Dagster ({args.reps} repetitions, "
                    f"AGG_PIPELINE_PLAIN_1M={mode or 'as set'})"
                )
                measured = measure_pipeline(
                    env, start, end, args.reps, {"AGG_PIPELINE_PLAIN_1M": mode} if mode else {}
                )
                if mode == "false" and len(modes) > 1:
                    result["pipeline_exact_1m"] = measured
                else:
                    result["pipeline"] = measured
        # Concurrent runs split the window into whole days (two runs in one local day wait
        # on its advisory locks): a window of fewer days than runs has nothing to split, so
        # the curve's week (when measured) stands in.
        args.parallel_on_curve = False
        if want("parallel"):
            whole_days = int((end - start).total_seconds() // 86400)
            if whole_days >= args.parallel_runs:
                progress(f"parallel: the hourly run vs {args.parallel_runs} concurrent runs")
                result["parallel"] = measure_parallel(env, start, end, args.parallel_runs)
            elif want("curve") and bench_scale.parallel_point(args) is not None:
                progress(
                    f"parallel: {whole_days} whole day(s) < {args.parallel_runs} runs here: "
                    f"measured on the curve's {bench_scale.parallel_point(args)[0]} point"
                )
                args.parallel_on_curve = True
            else:
                progress(f"parallel: skipped ({whole_days} whole day(s) < {args.parallel_runs})")
        if want("old_way"):
            progress(f"old way: {args.old_way_hours} hourly pandas runs")
            result["old_way"] = measure_old_way(env, start, end, args.old_way_hours)
        if want("backfill"):
            progress(f"backfill bookkeeping: {args.backfill_partitions} partitions")
            result["backfill"] = measure_backfill(
                env, args.backfill_partitions, args.backfill_sample_runs
            )
        if want("reads"):
            progress("read path")
            result["reads"] = measure_reads(env, start, end, args.read_reps)
        if args.api_requests and want("api"):
            from benchmarks import bench_api

            progress(f"HTTP API: {args.api_requests} requests per endpoint, 32 clients")
            result["api"] = bench_api.measure_api(
                env.engine, env.warehouse_url, env.env(), end, args.api_requests
            )
        if want("pattern_writes"):
            progress("write path")
            result["pattern_writes"] = measure_pattern_writes(env, args.reps)
        if want("influx_patterns"):
            progress("pattern bucket: the old PatternAggregateClient's criteria")
            result["influx_patterns"] = bench_influx.measure(args.reps)
        if want("incremental"):
            progress("incremental refresh")
            result["incremental"] = measure_incremental(env, start, args.devices, args.hz)
        if args.event_executions and want("events"):
            # From the 1st of last month: its monthly partition is whole (a month in progress
            # is not a partition yet).
            first_event = (datetime.now(UTC).date().replace(day=1) - timedelta(days=1)).replace(
                day=1
            )
            result["events"] = bench_events.measure_events(
                env, args, datetime.combine(first_event, datetime.min.time(), tzinfo=UTC),
                args.reps,
            )  # fmt: skip
        if args.heal_trials and want("healing"):
            progress(f"healing through the daemon: {args.heal_trials} trials")
            result["healing"] = bench_heal.measure_healing(env, args.heal_trials)
        if want("fleet"):
            result["fleet"] = bench_scale.measure_fleet(args)
        if want("curve"):
            result["curve"] = bench_scale.measure_curve(args)
        result["ratios"] = ratios(result)
        result["verdicts"] = verdicts(result["ratios"])
    finally:
        env.close()
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
        progress(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
