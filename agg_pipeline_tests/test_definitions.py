"""The asset graph as a snapshot: an accidental change shows up in review."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg

from agg_pipeline.definitions import defs

EXPECTED_GRAPH = {
    "raw_readings": set(),
    "readings_1m": {"raw_readings"},
    "readings_5m": {"readings_1m"},
    "rollup_hourly": {"readings_1m", "raw_readings"},
    "rollup_daily": {"rollup_hourly", "raw_readings"},
    "rollup_weekly": {"rollup_daily", "raw_readings"},
    "conditions_daily": {"raw_readings"},
}
PARTITIONS = {
    "raw_readings": "hourly",
    "readings_1m": "hourly",
    "readings_5m": "hourly",
    "rollup_hourly": "hourly",
    "rollup_daily": "daily",
    "rollup_weekly": "weekly",
    "conditions_daily": "daily",
}


def test_graph_snapshot():
    graph = defs.resolve_asset_graph()
    actual = {
        key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert actual == EXPECTED_GRAPH


def test_partitions_and_backfill_policies():
    graph = defs.resolve_asset_graph()
    for name, grain in PARTITIONS.items():
        node = graph.get(dg.AssetKey(name))
        pdef = node.partitions_def
        assert isinstance(pdef, dg.TimeWindowPartitionsDefinition), name
        assert pdef.timezone == "UTC"
        assert {"hourly": "0 * * * *", "daily": "0 0 * * *", "weekly": "0 0 * * 1"}[grain] == (
            pdef.cron_schedule
        ), name
        if name != "raw_readings":
            assert node.backfill_policy == dg.BackfillPolicy.single_run(), name
    hourly = graph.get(dg.AssetKey("readings_1m")).partitions_def
    assert hourly.get_first_partition_key() == "2025-01-01-00:00"


def test_bad_catalogue_fails_definitions_load_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nsample_interval_seconds: 1\nfields: {ph: {sensor_type: P, unit: pH}}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", "import agg_pipeline.definitions"],
        env={"AGG_PIPELINE_CATALOGUE": str(bad), "PATH": ""},
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "fields.ph.min" in proc.stderr and "bad.yaml" in proc.stderr
