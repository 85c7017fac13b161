"""The PostgreSQL warehouse as a Dagster resource.

Holds the one SQLAlchemy engine per process, checks the database is reachable before a run
writes anything, and provides the one way partitions are written: a transaction that first
takes advisory locks on the (table, local day)s it touches, so two runs rewriting the same
window serialize and the later one computes from what the earlier one committed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from agg_pipeline import localdb
from agg_pipeline.catalogue import Catalogue
from agg_pipeline.settings import get_settings, normalize_database_url

log = logging.getLogger(__name__)

_EPOCH = date(2000, 1, 1)


class WarehouseUnavailable(RuntimeError):
    """The warehouse cannot be reached; raised before any write."""


class WarehouseReadOnly(WarehouseUnavailable):
    """The warehouse is reachable but may not be written; raised before any write."""


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
        with self.get_engine().begin() as conn:
            conn.execute(sa.text("SELECT set_config('work_mem', :v, true)"), {"v": self.work_mem})
            for table in names:
                for day in sorted(set(days)):
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(hashtext(:t), :d)"),
                        {"t": table, "d": (day - _EPOCH).days},
                    )
            yield conn

    def register_devices(self, devices: Sequence[str]) -> int:
        """Register devices seen for the first time (e.g. in diagnostics); how many were new."""
        if not devices:
            return 0
        with self.get_engine().begin() as conn:
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
