"""The PostgreSQL warehouse as a Dagster resource.

Holds the one SQLAlchemy engine per process, checks the database is reachable before a run
writes anything, and provides the one way partitions are written: a transaction that first
takes advisory locks on the (table, local day)s it touches, so two runs rewriting the same
window serialize and the later one computes from what the earlier one committed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import date

import dagster as dg
import psycopg2
import sqlalchemy as sa
from pydantic import Field

from agg_pipeline.config.catalogue import Catalogue
from agg_pipeline.config.settings import get_settings, normalize_database_url
from agg_pipeline.warehouse import localdb

log = logging.getLogger(__name__)

_EPOCH = date(2000, 1, 1)


class WarehouseUnavailable(RuntimeError):
    """The warehouse cannot be reached; raised before any write."""


class WarehouseReadOnly(WarehouseUnavailable):
    """The warehouse is reachable but may not be written; raised before any write."""


# --------------------------------------------------------------------------------------
# Error classes. psycopg2 files most server errors (a too-long index key, a full disk, a
# lock timeout, ...) under OperationalError, so the DBAPI class says nothing about whether
# trying again can help: the SQLSTATE does.
# --------------------------------------------------------------------------------------

# serialization_failure, deadlock_detected: another writer won; the same work can succeed.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
# The server went away: admin_shutdown (pg_terminate_backend, restart), crash_shutdown,
# cannot_connect_now (starting up); class 08 is connection exceptions.
_DISCONNECT_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
LOCK_NOT_AVAILABLE = "55P03"


def _dbapi_error(exc: BaseException) -> BaseException | None:
    return exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc


def sqlstate(exc: BaseException) -> str | None:
    return getattr(_dbapi_error(exc), "pgcode", None)


def is_transient(exc: BaseException) -> bool:
    """Connection lost, deadlock or serialization failure: worth the same work again.
    Anything else (bad data, a constraint, a limit, permissions) fails the same way twice."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    code = sqlstate(exc)
    if code:
        return code in _RETRYABLE_SQLSTATES or code in _DISCONNECT_SQLSTATES or code[:2] == "08"
    # No SQLSTATE: the client lost (or never had) the connection, e.g. "server closed the
    # connection unexpectedly", "connection already closed".
    return isinstance(_dbapi_error(exc), psycopg2.OperationalError | psycopg2.InterfaceError)


def is_lock_timeout(exc: BaseException) -> bool:
    return sqlstate(exc) == LOCK_NOT_AVAILABLE


def pg_message(exc: BaseException) -> str:
    """PostgreSQL's own message (primary, detail, hint), without the statement text."""
    orig = _dbapi_error(exc)
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if not primary:
        return (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    parts = [primary]
    for label, text in (("detail", diag.message_detail), ("hint", diag.message_hint)):
        if text:
            parts.append(f"{label}: {text}")
    return "; ".join(parts)


class LockWaitTimeout(RuntimeError):
    """A write waited AGG_PIPELINE_LOCK_TIMEOUT_SECONDS for a lock; ``what`` names the lock
    and who held it. ``exhausted``: the waits were already retried as often as allowed."""

    def __init__(self, what: str, waited: float, exhausted: bool = False) -> None:
        self.what, self.waited, self.exhausted = what, waited, exhausted
        super().__init__(f"waited {waited:g} s for {what}")


# Where lock waits are reported: the run's log while an asset writes (set by the asset
# wrapper), Python logging otherwise.
lock_wait_log: ContextVar[Callable[[str], None]] = ContextVar("lock_wait_log", default=log.warning)

_LOCK_TIMEOUT_SQL = "SELECT set_config('lock_timeout', :v, true)"


def set_lock_timeout(conn: sa.Connection) -> None:
    """SET LOCAL lock_timeout from AGG_PIPELINE_LOCK_TIMEOUT_SECONDS (this transaction)."""
    ms = max(1, round(get_settings().lock_timeout_seconds * 1000))
    conn.execute(sa.text(_LOCK_TIMEOUT_SQL), {"v": f"{ms}ms"})


_HOLDERS = """
SELECT l.pid, coalesce(nullif(a.application_name, ''), '?') AS app, a.state,
       extract(epoch FROM now() - a.xact_start)::int AS for_s, l.mode,
       CASE WHEN l.locktype = 'relation' THEN l.relation::regclass::text END AS rel
FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.granted AND l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND {which}
ORDER BY a.xact_start NULLS LAST, l.pid
LIMIT 5
"""
# Locks that block a writer's row-exclusive lock (DELETE / INSERT) or its reads.
_STRONG_RELATION_LOCKS = (
    "l.locktype = 'relation' AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', "
    "'ExclusiveLock', 'AccessExclusiveLock')"
)
# The two-key advisory lock (hashtext(table), day): classid / objid hold the keys.
_ADVISORY = (
    "l.locktype = 'advisory' AND l.objsubid = 2 AND l.classid = CAST(hashtext(:t) AS oid) "
    "AND l.objid = CAST(CAST(:d AS int) AS oid)"
)


def _holders(engine: sa.Engine, which: str, params: dict) -> str:
    """Who holds the locks matching ``which`` (read on a connection of its own)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(_HOLDERS.format(which=which)), params).all()
    except sa.exc.DBAPIError:
        return "holder unknown"
    if not rows:
        return "holder gone (released meanwhile)"
    return "held by " + ", ".join(
        f"pid {r.pid} ({r.app}, {r.state}, transaction open {r.for_s} s"
        + (f", {r.mode} on {r.rel}" if r.rel else "")
        + ")"
        for r in rows
    )


def describe_lock_wait(engine: sa.Engine, exc: BaseException) -> str:
    """What a statement that hit lock_timeout was waiting for, as far as can be told."""
    diag = getattr(_dbapi_error(exc), "diag", None)
    context = getattr(diag, "context", None)
    where = f" ({context.strip().splitlines()[0]})" if context else ""
    return f"a table or row lock{where}: " + _holders(engine, _STRONG_RELATION_LOCKS, {})


def masked(url: str) -> str:
    """A URL safe to print: the password, if any, hidden."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable database URL>"


@functools.cache
def engine_for(url: str) -> sa.Engine:
    """One pooled engine per URL per process."""
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=4,
        max_overflow=4,
        connect_args={"connect_timeout": 10, "application_name": "agg_pipeline"},
    )


def resolve_url(database_url: str | None) -> str:
    """``database_url`` if given (DATABASE_URL), else the local embedded server."""
    if database_url:
        return normalize_database_url(database_url)
    return localdb.local_url(get_settings().home, localdb.WAREHOUSE_DB)


def check_reachable(engine: sa.Engine) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise WarehouseUnavailable(
            f"cannot reach the warehouse at {masked(engine.url.render_as_string(False))}: {reason}"
        ) from None


# The schemas whose tables every run writes (rollups, devices and sensors, staging).
_WRITTEN_SCHEMAS = ("bi", "iot", "ops")


def check_writable(engine: sa.Engine) -> None:
    """Fail with one readable message when the connection may not write the warehouse.

    Without it a read-only database or a SELECT-only role fails deep inside the first
    write (after the staging work), with a driver message naming an internal table.
    """
    where = masked(engine.url.render_as_string(False))
    with engine.connect() as conn:
        if (
            conn.execute(sa.text("SELECT current_setting('transaction_read_only')")).scalar()
            == "on"
        ):
            raise WarehouseReadOnly(
                f"the warehouse at {where} is read-only (transaction_read_only = on: a standby, "
                "or default_transaction_read_only set for the database or role); runs write "
                f"the {', '.join(_WRITTEN_SCHEMAS)} schemas"
            )
        user, denied = conn.execute(
            sa.text(
                "SELECT current_user, "
                "array_agg(n.nspname || '.' || c.relname ORDER BY n.nspname, c.relname) "
                # INSERT only: every written table gets inserts, while which also need
                # UPDATE or DELETE varies; a narrower grant must not be refused here.
                "FILTER (WHERE NOT has_table_privilege(c.oid, 'INSERT')) "
                "FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
                "WHERE n.nspname = ANY(:schemas) AND c.relkind IN ('r', 'p')"
            ),
            {"schemas": list(_WRITTEN_SCHEMAS)},
        ).one()
    if denied:
        shown = ", ".join(denied[:5]) + (f" and {len(denied) - 5} more" if len(denied) > 5 else "")
        raise WarehouseReadOnly(
            f"role {user!r} may not write the warehouse at {where}: no INSERT on {shown} "
            "(GRANT SELECT, INSERT, UPDATE, DELETE on all tables in schemas "
            f"{', '.join(_WRITTEN_SCHEMAS)})"
        )


class WarehouseResource(dg.ConfigurableResource):
    """PostgreSQL warehouse: the bi/iot/crop tables and, for the postgres source, raw readings.

    ``database_url`` comes from the ``DATABASE_URL`` env var (an ``EnvVar``, so it is never
    shown in run config or logs); unset means the local embedded PostgreSQL.
    """

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL (postgresql+psycopg2://...). Unset: local embedded server.",
    )
    work_mem: str = Field(
        default="256MB", description="work_mem for the aggregation statements (SET LOCAL)."
    )

    def get_engine(self) -> sa.Engine:
        return engine_for(resolve_url(self.database_url))

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Fail fast, with a readable message, before any asset starts writing.
        check_reachable(self.get_engine())
        check_writable(self.get_engine())

    @contextmanager
    def locked_transaction(
        self, tables: str | Sequence[str], days: Sequence[date]
    ) -> Iterator[sa.Connection]:
        """A transaction holding advisory locks on ``(table, day)`` for each table and day.

        Locks are taken in one fixed order (no deadlocks between runs) and released at
        commit or rollback. Everything inside is atomic: a failure leaves the old rows.
        """
        names = sorted({tables} if isinstance(tables, str) else set(tables))
        keys = [(table, day) for table in names for day in sorted(set(days))]
        engine = self.get_engine()
        conn, trans = self._begin_locked(engine, keys)
        try:
            yield conn
            trans.commit()
        except BaseException as exc:
            trans.rollback()
            if is_lock_timeout(exc):
                # A lock the body's statements needed (e.g. a LOCK TABLE by another
                # session): the chunk rolled back; the asset wrapper may try the write again.
                waited = get_settings().lock_timeout_seconds
                raise LockWaitTimeout(describe_lock_wait(engine, exc), waited) from exc
            raise
        finally:
            conn.close()

    def _begin_locked(
        self, engine: sa.Engine, keys: list[tuple[str, date]]
    ) -> tuple[sa.Connection, sa.RootTransaction]:
        """A connection in a transaction holding every advisory lock of ``keys``.

        A lock another run holds longer than the lock timeout: roll back (releasing the
        locks already taken, so nobody waits on us meanwhile), say what we waited for and
        who holds it, and wait again, AGG_PIPELINE_LOCK_RETRIES times at most.
        """
        settings = get_settings()
        waits = 0
        while True:
            conn = engine.connect()
            trans = conn.begin()
            key: tuple[str, date] | None = None
            try:
                conn.execute(
                    sa.text("SELECT set_config('work_mem', :v, true)"), {"v": self.work_mem}
                )
                set_lock_timeout(conn)
                for key in keys:
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(hashtext(:t), :d)"),
                        {"t": key[0], "d": (key[1] - _EPOCH).days},
                    )
                return conn, trans
            except BaseException as exc:
                trans.rollback()
                conn.close()
                if key is None or not is_lock_timeout(exc):
                    raise
                table, day = key
                holders = _holders(engine, _ADVISORY, {"t": table, "d": (day - _EPOCH).days})
                what = (
                    f"the advisory lock on ({table}, {day}) (pg_advisory_xact_lock("
                    f"hashtext('{table}'), {(day - _EPOCH).days})), {holders}"
                )
                waits += 1
                if waits > settings.lock_retries:
                    raise LockWaitTimeout(
                        what, settings.lock_timeout_seconds, exhausted=True
                    ) from exc
                lock_wait_log.get()(
                    f"waited {settings.lock_timeout_seconds:g} s for {what}; waiting again "
                    f"({waits}/{settings.lock_retries})"
                )

    def register_devices(self, devices: Sequence[str]) -> int:
        """Register devices seen for the first time (e.g. in diagnostics); how many were new."""
        if not devices:
            return 0
        with self.get_engine().begin() as conn:
            set_lock_timeout(conn)
            return len(
                conn.execute(
                    sa.text(
                        "INSERT INTO iot.devices (device_code) "
                        "SELECT DISTINCT unnest(CAST(:d AS text[])) ORDER BY 1 "
                        "ON CONFLICT (device_code) DO NOTHING RETURNING id"
                    ),
                    {"d": sorted(set(devices))},
                ).all()
            )

    def register_sensors(self, catalogue: Catalogue, pairs: Sequence[tuple[str, str]]) -> int:
        """Register (device, field) pairs seen for the first time; return how many were new.

        Runs in its own short transaction, in a fixed order, so concurrent runs that meet
        the same new sensor never deadlock and never wait on each other's long work.
        """
        known = [(d, f) for d, f in sorted(set(pairs)) if f in catalogue.fields]
        if not known:
            return 0
        types = [
            (spec.sensor_type, spec.unit, spec.description or name, spec.min, spec.max)
            for name, spec in catalogue.fields.items()
        ]
        with self.get_engine().begin() as conn:
            set_lock_timeout(conn)
            conn.execute(
                sa.text(
                    "INSERT INTO iot.sensor_types (name, unit, description, min_value, max_value) "
                    "SELECT * FROM unnest(CAST(:n AS text[]), CAST(:u AS text[]), "
                    "CAST(:d AS text[]), CAST(:lo AS float8[]), CAST(:hi AS float8[])) ORDER BY 1 "
                    "ON CONFLICT (name) DO UPDATE SET unit = EXCLUDED.unit, "
                    "description = EXCLUDED.description, min_value = EXCLUDED.min_value, "
                    "max_value = EXCLUDED.max_value "
                    "WHERE (iot.sensor_types.unit, iot.sensor_types.description, "
                    "iot.sensor_types.min_value, iot.sensor_types.max_value) IS DISTINCT FROM "
                    "(EXCLUDED.unit, EXCLUDED.description, EXCLUDED.min_value, "
                    "EXCLUDED.max_value)"
                ),
                {
                    "n": [t[0] for t in types],
                    "u": [t[1] for t in types],
                    "d": [t[2] for t in types],
                    "lo": [t[3] for t in types],
                    "hi": [t[4] for t in types],
                },
            )
            conn.execute(
                sa.text(
                    "INSERT INTO iot.devices (device_code) "
                    "SELECT DISTINCT unnest(CAST(:d AS text[])) ORDER BY 1 "
                    "ON CONFLICT (device_code) DO NOTHING"
                ),
                {"d": [d for d, _ in known]},
            )
            created = conn.execute(
                sa.text(
                    "INSERT INTO iot.sensors (device_id, sensor_type_id, field, sensor_code) "
                    "SELECT dv.id, st.id, p.field, p.device || ':' || p.field "
                    "FROM unnest(CAST(:d AS text[]), CAST(:f AS text[])) AS p (device, field) "
                    "JOIN iot.devices AS dv ON dv.device_code = p.device "
                    "JOIN unnest(CAST(:tf AS text[]), CAST(:tn AS text[])) AS m (field, type_name) "
                    "  ON m.field = p.field "
                    "JOIN iot.sensor_types AS st ON st.name = m.type_name "
                    "ORDER BY dv.id, p.field "
                    "ON CONFLICT (device_id, field) DO NOTHING RETURNING id"
                ),
                {
                    "d": [d for d, _ in known],
                    "f": [f for _, f in known],
                    "tf": list(catalogue.fields),
                    "tn": [s.sensor_type for s in catalogue.fields.values()],
                },
            ).all()
        return len(created)
