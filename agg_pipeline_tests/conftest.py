"""Database fixtures: a real PostgreSQL for every test, never a mock.

TEST_DATABASE_URL (a server where we may CREATE DATABASE) is used when set; otherwise an
embedded PostgreSQL starts in a temp folder for this session and is deleted at the end.
Each test session creates its own uniquely named databases, so parallel CI runs sharing a
server never collide: a migrated template once per session, and a fresh copy of it for
every test that writes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from agg_pipeline.config.catalogue import get_catalogue
from agg_pipeline.config.settings import get_settings
from agg_pipeline.demo import readings as simulator
from agg_pipeline.warehouse import localdb, migrate

SESSION_TAG = uuid.uuid4().hex[:8]


def _with_database(server_url: str, database: str) -> str:
    return sa.make_url(server_url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a maintenance database on a server where tests may create databases."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        from agg_pipeline.config.settings import normalize_database_url

        yield normalize_database_url(configured)
        return
    home = tmp_path_factory.mktemp("pg")
    socket_dir = localdb.start(home)
    yield localdb.url_for(socket_dir, "postgres")
    localdb.stop(home)


def create_database(server_url: str, name: str, template: str | None = None) -> str:
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        tmpl = f" TEMPLATE {template}" if template else ""
        conn.execute(sa.text(f"CREATE DATABASE {name}{tmpl}"))
    engine.dispose()
    return _with_database(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    engine.dispose()


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    """Name of a migrated template database for this session."""
    name = f"aggtmpl_{SESSION_TAG}"
    url = create_database(pg_server_url, name)
    engine = sa.create_engine(url)
    migrate.migrate(engine)
    # The demo crop batch comes from the seed path (migrate writes no demo rows); the
    # conditions tests compute against its ranges.
    simulator.write_demo_crops(engine)
    engine.dispose()
    yield name
    drop_database(pg_server_url, name)


@pytest.fixture
def warehouse_url(pg_server_url: str, template_db: str, monkeypatch) -> Iterator[str]:
    """A fresh migrated warehouse database for one test; DATABASE_URL points at it."""
    name = f"aggtest_{SESSION_TAG}_{uuid.uuid4().hex[:8]}"
    url = create_database(pg_server_url, name, template=template_db)
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    from agg_pipeline.warehouse.engine import engine_for

    engine_for(url).dispose()
    drop_database(pg_server_url, name)
    get_settings.cache_clear()


@pytest.fixture
def engine(warehouse_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(warehouse_url)
    yield eng
    eng.dispose()


@pytest.fixture(autouse=True)
def _fresh_settings_cache() -> Iterator[None]:
    get_settings.cache_clear()
    get_catalogue.cache_clear()
    yield
    get_settings.cache_clear()
    get_catalogue.cache_clear()


@pytest.fixture
def dagster_instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """A real Dagster instance (sqlite storage in a temp dir) for one test.

    Not `instance_for_test()`: used as a context manager, Dagster 1.13 leaves the disposed
    instance's state storage set as the process-wide current one, which breaks every later
    `materialize()` in the session ("unable to open database file").
    """
    home = tmp_path / "dagster_home"
    home.mkdir()
    instance = dg.DagsterInstance.local_temp(str(home))
    yield instance
    instance.dispose()


@pytest.fixture(scope="session")
def project_root() -> Path:
    return Path(__file__).resolve().parent.parent
