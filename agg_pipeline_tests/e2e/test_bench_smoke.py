"""The benchmark on a tiny data set, so it cannot rot (the real run is `make bench`)."""

from __future__ import annotations

import json

from benchmarks import bench


def test_benchmark_runs_end_to_end(pg_server_url, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DATABASE_URL", pg_server_url)  # the server to create fresh DBs on
    out = tmp_path / "bench.json"
    assert (
        bench.main(
            [
                "--devices",
                "2",
                "--hz",
                "0.02",
                "--reps",
                "1",
                "--read-reps",
                "5",
                "--backfill-partitions",
                "24",
                "--backfill-sample-runs",
                "1",
                "--old-way-hours",
                "1",
                "--heal-trials",
                "0",  # through the daemon: minutes; run by `make bench`
                "--event-executions",
                "3000",
                "--event-days",
                "2",
                "--event-workspaces",
                "3",
                "--event-users",
                "9",
                "--event-old-way-hours",
                "1",
                "--curve-days",  # the curve is in the default run: its smallest point here
                "1",
                "--curve-devices",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    ratios = result["ratios"]
    for key in (
        "pipeline_over_floor",
        "old_way_over_pipeline",
        "backfill_overhead_pct",
        "read_speedup",
        "read_p50_ms",
        "worker_peak_rss_mb",
        "pattern_write_1000_s",
        "events_pipeline_over_floor",
        "events_old_way_over_pipeline",
        "curve_1d_pipeline_over_floor",
    ):
        assert key in ratios
    assert ratios["pipeline_over_floor"] > 0 and ratios["worker_peak_rss_mb"] > 0
    assert result["dataset"]["readings"] > 0
    assert set(result["reads"]["queries"]) == set(bench.READS) | set(bench.DASHBOARD_RAW)
    assert result["ratios"]["pattern_write_1000_s"] > 0
    table = capsys.readouterr().out
    assert "pipeline / floor" in table and "verdict" in table
    assert "events: graph / floor" in table
    assert result["events"]["dataset"]["executions"] > 3000  # and the redelivered 0.5 %


def test_closed_months_and_the_monthly_run():
    """A month is the monthly run's (and the floor's monthly median's) only when the window
    holds all of it; the weekly run is untouched."""
    from datetime import UTC, date, datetime, timedelta

    def at(day: str) -> datetime:
        return datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=UTC)

    assert bench.closed_months(at("2026-10-01"), at("2026-10-01") + timedelta(days=31)) == [
        date(2026, 10, 1)
    ]
    assert bench.closed_months(at("2026-10-01"), at("2026-10-31")) == []  # a day short
    assert bench.closed_months(at("2026-10-02"), at("2026-11-30")) == []
    assert bench.closed_months(at("2026-10-02"), at("2026-12-01")) == [date(2026, 11, 1)]
    assert bench.closed_months(at("2026-09-01"), at("2026-11-01")) == [
        date(2026, 9, 1),
        date(2026, 10, 1),
    ]
    assert bench.closed_months(at("2026-12-01") + timedelta(hours=1), at("2027-02-01")) == [
        date(2027, 1, 1)
    ]
    runs = dict(bench.pipeline_runs(at("2026-11-01"), at("2026-12-01")))
    assert runs["rollup_monthly"] == ["--partition-range", "2026-11-01...2026-11-01"]
    assert runs["rollup_weekly"] == ["--partition-range", "2026-10-26...2026-11-23"]
    assert "rollup_monthly" not in dict(bench.pipeline_runs(at("2026-11-02"), at("2026-11-09")))


def test_curve_points():
    """The curve's default points: a day, a week and the whole last complete month."""
    from datetime import date

    from benchmarks import bench_scale

    assert bench_scale.last_complete_month(date(2026, 12, 4)) == date(2026, 11, 1)
    assert bench_scale.last_complete_month(date(2027, 1, 1)) == date(2026, 12, 1)
    assert bench_scale.last_complete_month(date(2027, 3, 31)) == date(2027, 2, 1)
    assert bench_scale.curve_windows(date(2026, 11, 1), [1, 7, "month"]) == [
        ("1", 1),
        ("7", 7),
        ("month", 30),
    ]
    assert bench_scale.curve_windows(date(2028, 2, 1), ["month"]) == [("month", 29)]
    args = bench_scale._curve_days("1, 7,month")
    assert args == [1, 7, "month"]
    import argparse

    import pytest

    with pytest.raises(argparse.ArgumentTypeError, match="'0' is neither"):
        bench_scale._curve_days("0")
    with pytest.raises(argparse.ArgumentTypeError, match="'7' is given twice"):
        bench_scale._curve_days("7,7")
    # refused at the start, not after the other sections (the curve is measured last)
    for argv in (
        ["--only", "curve", "--curve-start", "2026-11-02"],  # a month from a 2nd
        ["--only", "curve", "--curve-start", "2999-01-01"],  # a month not ended
        ["--only", "curve", "--curve-days", "7", "--curve-start", "2999-01-01"],
    ):
        with pytest.raises(SystemExit) as refused:
            bench.main(argv)
        assert refused.value.code == 2


def test_scale_sections_run_end_to_end(pg_server_url, monkeypatch, tmp_path, capsys):
    """fleet (off in the default run) and curve at a tiny size: own databases, floor and
    pipeline, ratios and the table."""
    monkeypatch.setenv("DATABASE_URL", pg_server_url)
    out = tmp_path / "scale.json"
    # parallel too: the main set's one day has nothing to split, so it runs on the week.
    argv = ["--only", "fleet,curve,parallel", "--start", "2026-11-02", "--reps", "1",
            "--hz", "0.005", "--devices", "1", "--fleet-devices", "4", "--fleet-hz", "0.002",
            "--curve-days", "1,7", "--curve-start", "2026-11-02", "--curve-devices", "1",
            "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    fleet, point = result["fleet"], result["curve"]["points"]["1"]
    assert "parallel" not in result and "parallel" not in point
    week = result["curve"]["points"]["7"]["parallel"]
    assert week["runs"] == 2 and week["on"] == "the curve's 7 days"
    assert result["ratios"]["parallel_backfill_speedup"] == week["speedup"] > 0
    # 4 x 5 series x 0.002 Hz x 86,400 s, less the simulated outages (and plus duplicates)
    assert 0.8 * 3456 < fleet["dataset"]["readings"] <= 3456 * 1.01
    assert fleet["dataset"]["series"] == 20
    for w in (fleet, point):
        assert w["pipeline_over_floor"] == w["pipeline"]["total_s"] / w["floor"]["total_s"]
        assert [r["assets"].split(",")[0] for r in w["pipeline"]["runs"]] == [
            "readings_1m",
            "rollup_daily",
        ]
        # the worker's own VmHWM: never above its rusage maxrss (which also holds the
        # bench process's peak, carried over by vfork + exec)
        assert all(0 < r["peak_rss_mb"] <= r["rusage_maxrss_mb"] for r in w["pipeline"]["runs"])
    ratios = result["ratios"]
    assert ratios["fleet_pipeline_over_floor"] == fleet["pipeline_over_floor"]
    assert ratios["curve_1d_pipeline_us_per_reading"] == point["pipeline_us_per_reading"]
    assert result["verdicts"]["curve_worker_peak_rss_mb"] in ("met", "MISSED")
    table = capsys.readouterr().out
    assert "fleet: pipeline / floor" in table and "curve (days)" in table
    assert "parallel backfill (the curve's 7 days)" in table
    assert table.count("peak RSS") >= 4  # each run's line, fleet's and the curve point's
