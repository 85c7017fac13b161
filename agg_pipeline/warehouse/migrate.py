"""Apply the numbered, idempotent DDL files of ``warehouse/migrations/`` in name order.

They ship inside the package (package data, read through ``importlib.resources``), so a
plain ``pip install`` can migrate; AGG_PIPELINE_SQL_DIR points at another folder instead.

All pending files run in one transaction and each is recorded in ``ops.schema_migrations``
with a checksum. A file already applied with the same checksum is skipped; a changed file
is applied again (the files are idempotent, so this is how views get updated). Concurrent
``migrate`` calls serialize on an advisory lock. Tables that already exist with another
shape stop the run before any change (see ``schema_compat``); ``adopt=True`` renames them
aside to ``<name>_legacy`` first.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import psycopg2
import sqlalchemy as sa

from agg_pipeline.config.catalogue import get_catalogue
from agg_pipeline.config.settings import get_settings
from agg_pipeline.warehouse import realtime, schema_compat

log = logging.getLogger(__name__)

_MIGRATE_LOCK = 7_301_001  # arbitrary, constant advisory-lock key for migrations
LEGACY_SUFFIX = "_legacy"


class MigrationError(RuntimeError):
    pass


class IncompatibleSchema(MigrationError):
    """Existing tables the migrations would not bring into shape; nothing was changed."""

    def __init__(self, message: str, found: list[schema_compat.Incompatibility]) -> None:
        super().__init__(message)
        self.found = found


def quote(identifier: str) -> str:
    """Quote a name read from the catalog (not from config: any character is possible)."""
    return '"' + identifier.replace('"', '""') + '"'


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


MIGRATIONS_PACKAGE = "agg_pipeline.warehouse"
MIGRATIONS_FOLDER = "migrations"


def sql_dir() -> Traversable:
    """The migrations folder: AGG_PIPELINE_SQL_DIR when set, else the package's own
    ``warehouse/migrations/`` (wherever the package is installed)."""
    configured = get_settings().sql_dir
    folder = (
        configured
        if configured is not None
        else resources.files(MIGRATIONS_PACKAGE).joinpath(MIGRATIONS_FOLDER)
    )
    if not folder.is_dir():
        raise MigrationError(
            f"migrations folder not found at {folder}; AGG_PIPELINE_SQL_DIR must name a "
            "folder of numbered .sql files (unset: the ones shipped in the package)"
        )
    return folder


def discover(path: Path | Traversable | None = None) -> list[Migration]:
    folder = path or sql_dir()
    files = sorted(
        (p for p in folder.iterdir() if p.name.endswith(".sql") and p.name[:3].isdigit()),
        key=lambda p: p.name,
    )
    return [Migration(p.name, p.read_text(encoding="utf-8")) for p in files]


def _legacy_name(name: str) -> str:
    return f"{name[: 63 - len(LEGACY_SUFFIX)]}{LEGACY_SUFFIX}"


def _set_aside(conn: sa.Connection, qualified: str) -> list[str]:
    """Rename ``schema.t`` to ``schema.t_legacy``, with its indexes and owned sequences (their
    names are schema-wide: ours, e.g. ``uq_daily_sensor_metric``, must be free to create).
    Rows, constraints, foreign keys and dependent views go with it untouched."""
    schema, name = qualified.split(".", 1)
    target = _legacy_name(name)
    taken = conn.execute(
        sa.text("SELECT to_regclass(:q) IS NOT NULL"), {"q": f"{quote(schema)}.{quote(target)}"}
    ).scalar_one()
    if taken:
        raise MigrationError(
            f"cannot set {qualified} aside: {schema}.{target} already exists (rename or drop "
            "it, then re-run); nothing was changed"
        )
    oid = conn.execute(
        sa.text("SELECT CAST(:q AS regclass)::oid"), {"q": f"{quote(schema)}.{quote(name)}"}
    ).scalar_one()
    related = conn.execute(
        sa.text(
            "SELECT c.relname, c.relkind FROM pg_class AS c WHERE c.oid IN ("
            " SELECT indexrelid FROM pg_index WHERE indrelid = :oid"
            " UNION SELECT d.objid FROM pg_depend AS d JOIN pg_class AS s ON s.oid = d.objid"
            " WHERE d.refobjid = :oid AND d.classid = 'pg_class'::regclass"
            " AND s.relkind = 'S' AND d.deptype IN ('a', 'i')) ORDER BY 1"
        ),
        {"oid": oid},
    ).all()
    statements = [f"ALTER TABLE {quote(schema)}.{quote(name)} RENAME TO {quote(target)}"]
    for relname, relkind in related:
        kind = "INDEX" if relkind in ("i", "I") else "SEQUENCE"
        if not relname.endswith(LEGACY_SUFFIX):
            statements.append(
                f"ALTER {kind} {quote(schema)}.{quote(relname)} "
                f"RENAME TO {quote(_legacy_name(relname))}"
            )
    for statement in statements:
        conn.execute(sa.text(statement))
    return statements


def _incompatible_message(found: list[schema_compat.Incompatibility], sources: dict) -> str:
    lines = [
        "the database already has tables of another shape than agg_pipeline's; nothing was changed:"
    ]
    for item in found:
        lines.append(f"  {item.table} (created by {sources[item.table]}):")
        lines.extend(f"    - {p}" for p in item.problems)
    names = ", ".join(f"{i.table} -> {_legacy_name(i.table.split('.', 1)[1])}" for i in found)
    lines.append(
        "run `agg-pipeline migrate --adopt` to rename them aside (" + names + ", same "
        "schema, every row kept) and migrate; then `agg-pipeline import-history` copies the "
        "old hourly/daily rows into the rollups. Or rename / drop them yourself."
    )
    return "\n".join(lines)


def migrate(
    engine: sa.Engine,
    path: Path | Traversable | None = None,
    views: bool = True,
    adopt: bool = False,
    set_aside: list[str] | None = None,
    lock_timeout_s: float = 60.0,
) -> list[str]:
    """Apply pending migrations, then (re)install the real-time views; return the names of
    the files applied. The views are generated from the catalogue and settings in force.

    Everything - the shape check, the renames of ``adopt`` and every pending file - is one
    transaction under a transaction-level advisory lock: a failure changes nothing, and
    concurrent ``migrate`` calls wait for each other. Tables of another shape than the
    migrations expect raise :class:`IncompatibleSchema` before any change, unless ``adopt``
    renames them aside to ``<name>_legacy`` (the tables renamed are appended to
    ``set_aside`` when given).
    """
    migrations = discover(path)
    applied: list[str] = []
    expected = schema_compat.expected_tables((m.name, m.sql) for m in migrations)
    with engine.connect() as conn:
        try:
            with conn.begin():
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATE_LOCK})
                # DDL waits for every open reader of its table: fail with a clear message
                # instead of hanging (and blocking all later readers behind it).
                conn.execute(
                    sa.text("SELECT set_config('lock_timeout', :t, true)"),
                    {"t": f"{int(lock_timeout_s * 1000)}ms"},
                )
                found = schema_compat.find_incompatible(conn, expected)
                if found and not adopt:
                    sources = {q: e.source for q, e in expected.items()}
                    raise IncompatibleSchema(_incompatible_message(found, sources), found)
                for item in found:
                    for statement in _set_aside(conn, item.table):
                        log.info("adopt: %s", statement)
                    if set_aside is not None:
                        set_aside.append(
                            f"{item.table} -> {_legacy_name(item.table.split('.', 1)[1])}"
                        )
                conn.execute(sa.text("CREATE SCHEMA IF NOT EXISTS ops"))
                conn.execute(
                    sa.text(
                        "CREATE TABLE IF NOT EXISTS ops.schema_migrations ("
                        " filename text PRIMARY KEY, checksum text NOT NULL,"
                        " applied_at timestamptz NOT NULL DEFAULT now())"
                    )
                )
                done = dict(
                    conn.execute(
                        sa.text("SELECT filename, checksum FROM ops.schema_migrations")
                    ).all()
                )
                for m in migrations:
                    if done.get(m.name) == m.checksum:
                        continue
                    _apply(conn, m)
                    applied.append(m.name)
        except sa.exc.DBAPIError as exc:
            # The lock, the check or the bookkeeping failed (not a migration file).
            raise MigrationError(
                f"migrate failed, nothing was changed: {_pg_message(exc.orig)}"
            ) from None
    if views:
        realtime.install(engine, get_catalogue(), get_settings())
    return applied


def _pg_message(error: BaseException | None) -> str:
    """PostgreSQL's own report: severity, message, detail, hint, position (psycopg2 puts
    them in pgerror), and the SQLSTATE."""
    if error is None:
        return "unknown error"
    text = (getattr(error, "pgerror", None) or str(error)).strip()
    code = getattr(error, "pgcode", None)
    return f"{text} (SQLSTATE {code})" if code else text


def _lock_hint(error: BaseException) -> str:
    if getattr(error, "pgcode", None) == "55P03":  # lock_not_available
        return (
            "\nanother session holds a lock on a table this file alters (an open transaction, "
            "a running asset): see pg_stat_activity / pg_locks, then re-run"
        )
    return ""


def _apply(conn: sa.Connection, m: Migration) -> None:
    # A savepoint per file: its error is read while the transaction is still usable, so
    # the report is PostgreSQL's message, not a later InFailedSqlTransaction.
    dbapi = conn.connection.dbapi_connection
    try:
        with conn.begin_nested():
            # Straight to the driver: no parameter parsing of the DDL text ('%').
            with dbapi.cursor() as cur:
                cur.execute(m.sql)
            conn.execute(
                sa.text(
                    "INSERT INTO ops.schema_migrations (filename, checksum) "
                    "VALUES (:f, :c) ON CONFLICT (filename) DO UPDATE "
                    "SET checksum = EXCLUDED.checksum, applied_at = now()"
                ),
                {"f": m.name, "c": m.checksum},
            )
    except psycopg2.Error as exc:
        raise MigrationError(
            f"{m.name} failed, nothing was changed (all pending files roll back together):\n"
            f"{_pg_message(exc)}{_lock_hint(exc)}"
        ) from None
    except sa.exc.DBAPIError as exc:
        raise MigrationError(
            f"{m.name} failed, nothing was changed (all pending files roll back together):\n"
            f"{_pg_message(exc.orig)}{_lock_hint(exc.orig)}"
        ) from None
