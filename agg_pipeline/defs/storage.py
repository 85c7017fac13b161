"""The Dagster instance's PostgreSQL storage, with pooled connections for the event log
and the run storage (dagster.yaml: ``storage: custom: agg_pipeline.defs.storage``).

dagster-postgres opens a new connection for every storage call (``NullPool``, so that a
process holds none between calls). A run writes an event per partition and asset (each
``ASSET_MATERIALIZATION_PLANNED`` when the run is created, each
``ASSET_MATERIALIZATION`` when its step ends), and storing an asset event takes three
connections (the insert, the asset index, a ``has_table`` look-up). A week's hourly
backfill (168 partitions x 4 assets) made ~4,000 connections, ~10 ms each on the embedded
server under load: about 40 s of a run whose SQL takes 50 s (issue 15). Here each process
keeps one connection open and reuses it; a call made while it is in use (another thread)
opens one more, closed after the call, as before. ``pool_pre_ping``: a connection the
server dropped (restart, idle timeout) is replaced before use, not failed.

Everything else is dagster-postgres' own: same tables, same config
(``postgres_url`` / ``postgres_db``, ``should_autocreate_tables``), same schedule storage;
the webserver still swaps in its own pool (``optimize_for_webserver``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from dagster._core.storage.config import pg_config
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config

if TYPE_CHECKING:
    from dagster._config.config_schema import UserConfigSchema
    from dagster._serdes import ConfigurableClassData
    from dagster_postgres.auth import PgTokenProvider

# One connection kept per storage and process; more only while it is busy, closed after.
POOL: dict[str, Any] = {
    "poolclass": sa.pool.QueuePool,
    "pool_size": 1,
    "max_overflow": -1,  # never wait for the kept connection: open another, as NullPool did
    "pool_pre_ping": True,
}


class PooledPostgresStorage(DagsterPostgresStorage):
    """``DagsterPostgresStorage`` whose event log and run storage reuse a connection."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: PgTokenProvider | None = None,
    ) -> None:
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)
        for storage in (self._event_log_storage, self._run_storage):
            # The attribute dagster-postgres' own optimize_for_webserver replaces: every
            # call of the storage connects through it.
            storage._engine.dispose()
            storage._engine = create_pg_engine(
                postgres_url, token_provider, isolation_level="AUTOCOMMIT", **POOL
            )

    @classmethod
    def config_type(cls) -> UserConfigSchema:
        return pg_config()

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> PooledPostgresStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
