"""Apply the numbered, idempotent DDL files of ``sql/`` in name order.

Each file runs in its own transaction and is recorded in ``ops.schema_migrations`` with a
checksum. A file already applied with the same checksum is skipped; a changed file is
applied again (the files are idempotent, so this is how views and seeds get updated).
Concurrent ``migrate`` calls serialize on an advisory lock.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from agg_pipeline.settings import PACKAGE_DIR

_MIGRATE_LOCK = 7_301_001  # arbitrary, constant advisory-lock key for migrations


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def sql_dir() -> Path:
    """The ``sql/`` folder: AGG_PIPELINE_SQL_DIR, else the checkout's top-level ``sql/``."""
    configured = os.environ.get("AGG_PIPELINE_SQL_DIR")
    path = Path(configured) if configured else PACKAGE_DIR.parent / "sql"
    if not path.is_dir():
        raise MigrationError(
            f"sql folder not found at {path}; set AGG_PIPELINE_SQL_DIR to the project's sql/"
        )
    return path


def discover(path: Path | None = None) -> list[Migration]:
    folder = path or sql_dir()
    files = sorted(p for p in folder.glob("*.sql") if p.name[:3].isdigit())
    return [Migration(p.name, p.read_text(encoding="utf-8")) for p in files]


def migrate(engine: sa.Engine, path: Path | None = None, views: bool = True) -> list[str]:
    """Apply pending migrations, then (re)install the real-time views; return the names of
    the files applied. The views are generated from the catalogue and settings in force."""
    migrations = discover(path)
    applied: list[str] = []
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATE_LOCK})
        try:
            conn.execute(sa.text("CREATE SCHEMA IF NOT EXISTS ops"))
            conn.execute(
                sa.text(
                    "CREATE TABLE IF NOT EXISTS ops.schema_migrations ("
                    " filename text PRIMARY KEY, checksum text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
            )
            conn.commit()
            done = dict(
                conn.execute(sa.text("SELECT filename, checksum FROM ops.schema_migrations")).all()
            )
            for m in migrations:
                if done.get(m.name) == m.checksum:
                    continue
                try:
                    # Straight to the driver: no parameter parsing of the DDL text ('%').
                    with conn.connection.dbapi_connection.cursor() as cur:
                        cur.execute(m.sql)
                    conn.execute(
                        sa.text(
                            "INSERT INTO ops.schema_migrations (filename, checksum) "
                            "VALUES (:f, :c) ON CONFLICT (filename) DO UPDATE "
                            "SET checksum = EXCLUDED.checksum, applied_at = now()"
                        ),
                        {"f": m.name, "c": m.checksum},
                    )
                    conn.commit()
                except sa.exc.DBAPIError as exc:
                    conn.rollback()
                    raise MigrationError(f"{m.name} failed: {exc.orig}") from exc
                applied.append(m.name)
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATE_LOCK})
            conn.commit()
    if views:
        from agg_pipeline import realtime
        from agg_pipeline.catalogue import get_catalogue
        from agg_pipeline.settings import get_settings

        realtime.install(engine, get_catalogue(), get_settings())
    return applied
