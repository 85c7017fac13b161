"""The console script, headless, as a user runs it (migrate, seed and the Dagster CLI from a
regular install: test_install.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agg_pipeline.warehouse import migrate

BIN = Path(sys.executable).parent


def run(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc


def test_local_embedded_server_lifecycle(tmp_path):
    env = {**os.environ, "AGG_PIPELINE_HOME": str(tmp_path / "home")}
    env.pop("DATABASE_URL", None)
    cli = str(BIN / "agg-pipeline")
    try:
        out = run([cli, "db", "start"], env).stdout
        assert "local PostgreSQL running" in out
        url = run([cli, "db", "url"], env).stdout.strip()
        assert url.startswith("postgresql+psycopg2://postgres@/agg_pipeline?host=")
        dagster_url = run([cli, "db", "url", "--dagster"], env).stdout.strip()
        assert "/dagster?host=" in dagster_url
        out = run([cli, "migrate"], env).stdout  # no DATABASE_URL: the local server
        assert f"{len(migrate.discover())} migration(s) applied" in out
        out = run([cli, "seed", "--days", "0.1", "--devices", "1", "--if-empty"], env).stdout
        assert "wrote" in out
        out = run([cli, "seed", "--days", "0.1", "--if-empty"], env).stdout
        assert "already has readings" in out  # make dev does not seed twice
    finally:
        out = run([cli, "db", "stop"], env).stdout
    assert "stopped" in out
    assert "not running" in run([cli, "db", "stop"], env).stdout
