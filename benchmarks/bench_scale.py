"""The bench's scale sections: the pipeline against the floor as the data changes shape.

fleet - the same readings per day as the main set (20 devices x 5 fields at 1 Hz: 100
  series), spread over 100x more series: 2,000 devices x 5 fields at 0.01 Hz (10,000
  series). The issue names 1,000 devices x 10 fields; the hydroponics catalogue the
  bench reads has 5 fields (BENCH_FIELDS), so the devices double instead. Per-series
  costs (sensor registration, per-sensor rows in every rollup, per-sensor medians) show
  here; per-reading costs do not change.
curve - 3 devices x 5 fields at --hz over a day, a week and a whole month (--curve-days
  1,7,month) from the first day of the last complete month (--curve-start): floor and
  pipeline seconds and microseconds per reading at each window, so fixed costs (process
  start-up, partition bookkeeping) and costs that grow with the window separate. The
  month runs rollup_monthly and the floor's monthly median too. Part of the default run,
  so one `make bench` reports the week's and the month's ratios beside the rest.

Each measurement seeds its own fresh databases (bench.BenchEnv), and measures the floor
and the pipeline exactly as the main floor / pipeline sections do, in this process.
"""

from __future__ import annotations

import argparse
import calendar
import time
from datetime import UTC, date, datetime, timedelta

MONTH = "month"  # a --curve-days point: the whole calendar month from --curve-start


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scale sections (fleet: --only fleet; curve)")
    group.add_argument("--fleet-devices", type=int, default=2000)
    group.add_argument(
        "--fleet-hz",
        type=float,
        default=0.01,
        help="per series (default 0.01: 2,000 x 5 series x 0.01 Hz = 8.64 M readings a "
        "day, the main set's 20 x 5 x 1 Hz)",
    )
    group.add_argument("--fleet-days", type=float, default=1.0)
    group.add_argument(
        "--curve-days",
        type=_curve_days,
        default=[1, 7, MONTH],
        help="window lengths in days or 'month' (the whole month from --curve-start), each "
        "seeded and measured fresh (default 1,7,month)",
    )
    group.add_argument(
        "--curve-start",
        type=date.fromisoformat,
        help="first day of every curve window (default: the 1st of the last complete month, "
        "so that the month point is a whole monthly partition)",
    )
    group.add_argument(
        "--curve-devices",
        type=int,
        default=3,
        help="at --hz (default 3: the week is 9 M readings, about the main set's day)",
    )
    group.add_argument(
        "--curve-reps",
        type=int,
        default=1,
        help="floor / pipeline repetitions per curve point (interleaved with --interleave)",
    )


def _curve_days(value: str) -> list[int | str]:
    points: list[int | str] = []
    for part in value.split(","):
        part = part.strip()
        if part in {str(p) for p in points}:
            raise argparse.ArgumentTypeError(f"--curve-days: {part!r} is given twice")
        if part == MONTH:
            points.append(MONTH)
        elif part.isdigit() and int(part) > 0:
            points.append(int(part))
        else:
            raise argparse.ArgumentTypeError(
                f"--curve-days: {part!r} is neither a whole number of days nor {MONTH!r}"
            )
    return points


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, before anything is seeded, curve options that could only fail at the end
    of the run (the curve is measured last)."""
    today = datetime.now(UTC).date()
    first = args.curve_start or last_complete_month(today)
    if MONTH in args.curve_days:
        if first.day != 1:
            parser.error(f"--curve-days {MONTH}: --curve-start must be a 1st, not {first}")
        days = calendar.monthrange(first.year, first.month)[1]
        if first + timedelta(days=days) > today:
            parser.error(f"--curve-days {MONTH}: the month of {first} has not ended yet")
    longest = max(days for _, days in curve_windows(first, args.curve_days))
    if first + timedelta(days=longest) > today:
        parser.error(f"--curve-start {first}: a {longest}-day window would end after today")


def last_complete_month(today: date) -> date:
    """The first day of the last calendar month that has ended by ``today`` (UTC)."""
    return (today.replace(day=1) - timedelta(days=1)).replace(day=1)


def curve_windows(start: date, points: list[int | str]) -> list[tuple[str, int]]:
    """(label, days) per curve point: ``month`` is the calendar month from ``start``."""
    out = []
    for point in points:
        if point == MONTH:
            out.append((MONTH, calendar.monthrange(start.year, start.month)[1]))
        else:
            out.append((str(point), int(point)))
    return out


def parallel_point(args) -> tuple[str, int] | None:
    """The curve point the parallel section runs on when the main set is too short: the
    first with at least --parallel-runs whole days (None: none has)."""
    first = args.curve_start or last_complete_month(datetime.now(UTC).date())
    for label, days in curve_windows(first, args.curve_days):
        if days >= args.parallel_runs:
            return label, days
    return None


def floor_and_pipeline(env, start: datetime, end: datetime, reps: int, interleave: bool) -> dict:
    """The main sections' floor and pipeline over env's data: --reps of each, or with
    --interleave that many (floor, pipeline) pairs and the median pair."""
    from benchmarks.bench import measure_floor, measure_pipeline, progress

    if not interleave:
        progress("floor")
        floor = measure_floor(env, start, end, reps)
        progress("pipeline")
        pipeline = measure_pipeline(env, start, end, reps, {})
        return {"floor": floor, "pipeline": pipeline}
    pairs = []
    for rep in range(reps):
        progress(f"interleaved {rep + 1}/{reps}: floor, then pipeline")
        floor = measure_floor(env, start, end, 1)
        pipeline = measure_pipeline(env, start, end, 1, {})
        pairs.append((pipeline["total_s"] / floor["total_s"], floor, pipeline))
    pairs.sort(key=lambda x: x[0])
    _, floor, pipeline = pairs[len(pairs) // 2]
    return {
        "floor": floor,
        "pipeline": pipeline,
        "interleaved_ratios": [round(x[0], 3) for x in pairs],
    }


def _measure_window(
    args,
    start: datetime,
    days: float,
    devices: int,
    hz: float,
    reps: int,
    parallel: bool = False,
) -> dict:
    """Fresh databases, the bench's readings over [start, start + days), floor and pipeline
    (and with ``parallel`` the parallel section's hourly run, one vs --parallel-runs)."""
    from benchmarks.bench import BENCH_FIELDS, BenchEnv, measure_parallel, progress, seed

    env = BenchEnv(args.keep)
    try:
        began = time.perf_counter()
        readings, spec = seed(env, start, days, devices, hz, args.duplicate_rate)
        seed_s = time.perf_counter() - began
        end = start + timedelta(days=days)
        out = {
            "dataset": {
                "readings": readings,
                "devices": devices,
                "fields": list(BENCH_FIELDS),
                "series": devices * len(BENCH_FIELDS),
                "hz": hz,
                "days": days,
                "start": start.isoformat(),
                "duplicate_rate": spec.duplicate_rate,
            },
            "seed_s": seed_s,
            **floor_and_pipeline(env, start, end, reps, args.interleave),
        }
        if parallel:
            progress(f"parallel: the hourly run vs {args.parallel_runs} concurrent runs")
            out["parallel"] = {
                **measure_parallel(env, start, end, args.parallel_runs),
                "on": f"the curve's {days:g} days",
            }
    finally:
        env.close()
    floor_s, pipeline_s = out["floor"]["total_s"], out["pipeline"]["total_s"]
    out["pipeline_over_floor"] = pipeline_s / floor_s
    out["floor_us_per_reading"] = floor_s / readings * 1e6
    out["pipeline_us_per_reading"] = pipeline_s / readings * 1e6
    return out


def _start_of(args, days: float) -> datetime:
    """--start, else the window ending with the last complete (UTC) day."""
    first = args.start or (datetime.now(UTC).date() - timedelta(days=int(-(-days // 1))))
    return datetime.combine(first, datetime.min.time(), tzinfo=UTC)


def measure_fleet(args) -> dict:
    from benchmarks.bench import progress

    start = _start_of(args, args.fleet_days)
    progress(
        f"fleet: {args.fleet_devices} devices x 5 fields at {args.fleet_hz:g} Hz, "
        f"{args.fleet_days:g} day(s), own databases"
    )
    return _measure_window(
        args, start, args.fleet_days, args.fleet_devices, args.fleet_hz, args.reps
    )


def measure_curve(args) -> dict:
    from benchmarks.bench import progress

    first = args.curve_start or last_complete_month(datetime.now(UTC).date())
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    parallel_on = parallel_point(args) if getattr(args, "parallel_on_curve", False) else None
    points = {}
    for label, days in curve_windows(first, args.curve_days):
        progress(
            f"curve: {label} ({days} day(s)) of {args.curve_devices} device(s) at {args.hz:g} Hz"
        )
        points[label] = _measure_window(
            args,
            start,
            days,
            args.curve_devices,
            args.hz,
            args.curve_reps,
            parallel=parallel_on is not None and label == parallel_on[0],
        )
    return {"start": start.isoformat(), "points": points}


def ratios(r: dict) -> dict:
    out: dict = {}
    fleet = r.get("fleet")
    if fleet:
        out["fleet_pipeline_over_floor"] = fleet["pipeline_over_floor"]
        out["fleet_worker_peak_rss_mb"] = fleet["pipeline"]["worker_peak_rss_mb"]
        main = r.get("pipeline")
        if main and r["dataset"]["readings"]:
            # The same readings a day over 100x the series: what the series cost.
            out["fleet_pipeline_over_main_pipeline"] = fleet["pipeline"]["total_s"] / (
                main["total_s"] * fleet["dataset"]["readings"] / r["dataset"]["readings"]
            )
    points = (r.get("curve") or {}).get("points") or {}
    for label, p in points.items():
        key = f"curve_{label}d" if label.isdigit() else f"curve_{label}"
        out[f"{key}_pipeline_over_floor"] = p["pipeline_over_floor"]
        out[f"{key}_floor_us_per_reading"] = p["floor_us_per_reading"]
        out[f"{key}_pipeline_us_per_reading"] = p["pipeline_us_per_reading"]
    # The two headline ratios, with targets of their own in the table.
    if "7" in points:
        out["week_pipeline_over_floor"] = points["7"]["pipeline_over_floor"]
    if MONTH in points:
        out["month_pipeline_over_floor"] = points[MONTH]["pipeline_over_floor"]
    if points:
        out["curve_worst_pipeline_over_floor"] = max(
            p["pipeline_over_floor"] for p in points.values()
        )
        out["curve_worker_peak_rss_mb"] = max(
            p["pipeline"]["worker_peak_rss_mb"] for p in points.values()
        )
    return out


def _floor_line(f: dict) -> str:
    from benchmarks.bench import FLOOR_MEDIANS

    parts = [f"{n} {f[n + '_s']:.2f} s" for n in ("partials_1m", *FLOOR_MEDIANS) if n + "_s" in f]
    return " + ".join(parts) + f" = {f['total_s']:.2f} s"


def _window_lines(label: str, w: dict) -> list[str]:
    from benchmarks.bench import run_lines

    d, p = w["dataset"], w["pipeline"]
    lines = [
        f"{label}: {d['readings']:,} readings ({d['devices']} devices x {len(d['fields'])} "
        f"fields = {d['series']:,} series at {d['hz']:g} Hz, {d['days']:g} day(s) from "
        f"{d['start'][:10]}; seeded in {w['seed_s']:.0f} s)",
        f"  floor: {_floor_line(w['floor'])} ({w['floor_us_per_reading']:.2f} us/reading)",
        "  pipeline: "
        + " + ".join(f"{x['assets'].split(',')[0]}.. {x['seconds']:.2f} s" for x in p["runs"])
        + f" = {p['total_s']:.2f} s ({w['pipeline_us_per_reading']:.2f} us/reading); "
        f"pipeline / floor {w['pipeline_over_floor']:.2f}",
    ]
    if w.get("interleaved_ratios"):
        lines.append(f"  pipeline / floor per interleaved pair: {w['interleaved_ratios']}")
    return lines + ["  " + x for x in run_lines(p["runs"])]


def render(result: dict) -> list[str]:
    lines: list[str] = []
    if result.get("fleet"):
        lines += _window_lines("fleet", result["fleet"])
        extra = result["ratios"].get("fleet_pipeline_over_main_pipeline")
        if extra:
            lines.append(
                f"  fleet pipeline / main pipeline per reading: {extra:.2f} (same readings a "
                "day, 100x the series in the defaults)"
            )
    curve = result.get("curve")
    if curve:
        lines.append("")
        lines.append(
            f"{'curve (days)':<14}{'readings':>12}{'floor s':>10}{'pipeline s':>12}"
            f"{'floor us/r':>12}{'pipe us/r':>11}{'pipe/floor':>12}{'peak RSS MB':>13}"
        )
        for days, p in curve["points"].items():
            lines.append(
                f"{days:<14}{p['dataset']['readings']:>12,}{p['floor']['total_s']:>10.2f}"
                f"{p['pipeline']['total_s']:>12.2f}{p['floor_us_per_reading']:>12.2f}"
                f"{p['pipeline_us_per_reading']:>11.2f}{p['pipeline_over_floor']:>12.2f}"
                f"{p['pipeline']['worker_peak_rss_mb']:>13.0f}"
            )
        for days, p in curve["points"].items():
            lines += _window_lines(f"curve {days} d" if days.isdigit() else f"curve {days}", p)
    return lines
