"""The materialized views of schema ``bi`` (the dashboards' ``bi.sensor_latest`` ...):
refreshed by the ``dashboard_views`` asset."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa


def refresh_all(engine: sa.Engine, log: Callable[[str], None]) -> dict[str, dict]:
    """Refresh every materialized view in ``bi``: CONCURRENTLY where it has a unique index
    and is populated (readers are never blocked), otherwise a plain refresh. Per view: its
    rows, seconds taken and whether it ran concurrently."""
    refreshed = {}
    with engine.connect() as conn:
        views = conn.execute(
            sa.text(
                "SELECT m.matviewname, m.ispopulated, EXISTS (SELECT 1 FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = "
                "c.relnamespace WHERE n.nspname = 'bi' AND c.relname = m.matviewname "
                "AND i.indisunique) FROM pg_matviews m WHERE m.schemaname = 'bi' ORDER BY 1"
            )
        ).all()
    for name, populated, unique in views:
        concurrently = "CONCURRENTLY " if unique and populated else ""
        start = datetime.now(UTC)
        with engine.begin() as conn:
            # `name` comes from the catalog and is quoted as an identifier.
            quoted = conn.dialect.identifier_preparer.quote(name)
            conn.execute(sa.text(f"REFRESH MATERIALIZED VIEW {concurrently}bi.{quoted}"))
            rows = conn.execute(sa.text(f"SELECT count(*) FROM bi.{quoted}")).scalar_one()
        refreshed[f"bi.{name}"] = {
            "rows": rows,
            "seconds": round((datetime.now(UTC) - start).total_seconds(), 3),
            "concurrently": bool(concurrently),
        }
        log(f"refreshed bi.{name}: {rows} rows")
    return refreshed
