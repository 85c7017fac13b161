"""AGG_PIPELINE_BACKFILL_PARTITIONS_PER_RUN: the backfill policy every partitioned asset
gets when the code location loads (default: one run, as test_definitions asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

_PROBE = """
import json
import dagster as dg
from agg_pipeline.definitions import defs
graph = defs.resolve_asset_graph()
out = {}
for name in ("readings_1m", "rollup_daily", "rollup_weekly"):
    policy = graph.get(dg.AssetKey(name)).backfill_policy
    out[name] = [policy.policy_type.value, policy.max_partitions_per_run]
print(json.dumps(out))
"""


def test_partitions_per_run_splits_backfills_into_runs(tmp_path):
    env = {**os.environ, "AGG_PIPELINE_BACKFILL_PARTITIONS_PER_RUN": "48"}
    env["DAGSTER_HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    policies = json.loads(done.stdout.strip().splitlines()[-1])
    assert policies == {name: ["MULTI_RUN", 48] for name in policies}
