"""The package as production images install it: `pip install .` (not editable) into a fresh
venv outside the checkout, then `agg-pipeline migrate`, `agg-pipeline seed` and
`dagster asset materialize -m agg_pipeline.definitions` on an empty database.

Only agg_pipeline itself is freshly installed (from a wheel built from a copy of the
sources, which is deleted before anything runs); its dependencies come from the test venv
through a ``.pth`` line, so the test needs no package index and takes seconds, not minutes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from agg_pipeline.config.catalogue import load_catalogue
from agg_pipeline.warehouse import migrate
from agg_pipeline_tests import reference
from agg_pipeline_tests.conftest import create_database, drop_database
from agg_pipeline_tests.warehouse.test_rollups import assert_matches, table

# What a source distribution of the project holds (git-ignored state such as .venv and
# .local stays behind).
SOURCES = ("agg_pipeline", "pyproject.toml", "README.md")


def run(args: list[str], env: dict, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a fresh venv holding a regular install of agg_pipeline."""
    tmp = tmp_path_factory.mktemp("install")
    src, wheels, venv = tmp / "src", tmp / "wheels", tmp / "venv"
    src.mkdir()
    for name in SOURCES:
        path = project_root / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        {**os.environ},
        tmp,
    )
    shutil.rmtree(src)  # nothing left to import from but the install
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], {**os.environ}, tmp)
    python = venv / "bin" / "python"
    wheel = next(wheels.glob("agg_pipeline-*.whl"))
    run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        {**os.environ},
        tmp,
    )
    # The dependencies: the test venv's site-packages, after the venv's own (so its
    # agg_pipeline wins; .pth files of the appended folder, like the editable hook, are
    # not processed).
    site = Path(
        run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            {**os.environ},
            tmp,
        ).stdout.strip()
    )
    (site / "test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv / "bin"


def test_installed_package_migrates_seeds_and_materializes(installed, pg_server_url, tmp_path):
    name = f"agginst_{uuid.uuid4().hex[:8]}"
    url = create_database(pg_server_url, name)  # empty: no schema yet
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("")  # a bare instance
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DAGSTER_HOME": str(dagster_home),
        "AGG_PIPELINE_HOME": str(tmp_path / "home"),
    }
    for name_ in ("AGG_PIPELINE_SQL_DIR", "PYTHONPATH"):
        env.pop(name_, None)
    cwd = tmp_path  # outside the checkout: nothing importable from the working directory
    try:
        where = run(
            [
                str(installed / "python"),
                "-c",
                "import agg_pipeline, agg_pipeline.warehouse.migrate as m; "
                "print(agg_pipeline.__file__); print(m.sql_dir())",
            ],
            env,
            cwd,
        ).stdout.split()
        site = str(installed.parent / "lib")
        assert all(p.startswith(site) for p in where), where

        out = run([str(installed / "agg-pipeline"), "migrate"], env, cwd).stdout
        assert f"{len(migrate.discover())} migration(s) applied" in out and "password" not in out
        out = run([str(installed / "agg-pipeline"), "migrate"], env, cwd).stdout
        assert "0 migration(s) applied" in out
        out = run(
            [
                str(installed / "agg-pipeline"),
                "seed",
                "--days",
                "1",
                "--start",
                "2026-11-01",
                "--devices",
                "2",
                "--hz",
                "0.01",
            ],
            env,
            cwd,
        ).stdout
        assert "wrote" in out
        # The dagster CLI of the venv's interpreter (the same entry point as bin/dagster).
        dagster = [str(installed / "python"), "-m", "dagster"]
        run(
            [
                *dagster,
                "asset",
                "materialize",
                "-m",
                "agg_pipeline.definitions",
                "--select",
                "readings_1m,readings_5m,rollup_hourly",
                "--partition-range",
                "2026-11-01-00:00...2026-11-01-23:00",
            ],
            env,
            cwd,
        )
        run(
            [
                *dagster,
                "asset",
                "materialize",
                "-m",
                "agg_pipeline.definitions",
                "--select",
                "rollup_daily,conditions_daily",
                "--partition",
                "2026-11-01",
            ],
            env,
            cwd,
        )

        engine = sa.create_engine(url)
        start = datetime(2026, 11, 1, tzinfo=UTC)
        raw = reference.load_raw(engine, start, start + timedelta(days=1))
        valid = reference.valid_readings(raw, load_catalogue("hydroponics"), datetime.now(UTC))
        assert_matches(
            table(engine, "bi.hourly_sensor_agg", "hour_start"),
            reference.grouped_stats(valid, valid["time"].dt.floor("1h")),
        )
        assert_matches(
            table(engine, "bi.daily_sensor_agg", "metric_date"),
            reference.grouped_stats(valid, reference.local_day(valid["time"], "UTC")),
        )
        with engine.connect() as conn:
            conditions = pd.read_sql(sa.text("SELECT * FROM bi.daily_sensor_conditions"), conn)
            sensors = conn.execute(sa.text("SELECT count(*) FROM iot.sensors")).scalar_one()
        engine.dispose()
        assert len(conditions) == 2 * 4 and sensors == 2 * 7
    finally:
        drop_database(pg_server_url, name)
