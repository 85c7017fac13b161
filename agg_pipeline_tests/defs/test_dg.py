"""`dg check defs` and `dg list defs` on the project ([tool.dg] in pyproject.toml)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agg_pipeline.definitions import defs
from agg_pipeline_tests.defs.test_definitions import SCHEDULES


def test_dg_check_and_list_defs(tmp_path):
    """The project as `dg` sees it ([tool.dg] in pyproject.toml): its checks pass and it
    lists exactly the definitions the code location loads."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")  # a bare instance (dagster.yaml needs a server)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    dg_cli = str(Path(sys.executable).parent / "dg")
    root = Path(__file__).resolve().parents[2]
    checked = subprocess.run(
        [dg_cli, "check", "defs"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr[-3000:]
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr
    listed = subprocess.run(
        [dg_cli, "list", "defs", "--json"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    found = json.loads(listed.stdout)
    graph = defs.resolve_asset_graph()
    assert {a["asset_key"] for a in found["assets"]} == {
        k.to_user_string() for k in graph.get_all_asset_keys()
    }
    assert {s["name"] for s in found["schedules"]} == set(SCHEDULES)
