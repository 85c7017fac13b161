"""Order-independent content checksums of warehouse tables, for before/after assertions."""

from __future__ import annotations

import sqlalchemy as sa

from agg_pipeline.warehouse.statements import quote_ident


def table_checksum(conn: sa.Connection, table: str) -> tuple[int, str]:
    """(row count, md5 of the sorted rows' text) of ``schema.table``."""
    qualified = quote_ident(table)
    return tuple(
        conn.execute(
            sa.text(
                f"SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') "
                f"FROM {qualified} AS t"
            )
        ).one()
    )


def checksums(engine: sa.Engine, tables: list[str]) -> dict[str, tuple[int, str]]:
    """Checksums of several tables, read in one snapshot."""
    with engine.connect() as conn:
        conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        return {t: table_checksum(conn, t) for t in tables}
