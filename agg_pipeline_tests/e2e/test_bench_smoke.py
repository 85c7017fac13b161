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
