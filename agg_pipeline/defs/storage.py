"""The Dagster instance's PostgreSQL storage, with pooled connections and batched asset
events (dagster.yaml: ``storage: custom: agg_pipeline.defs.storage``).

A run stores an event per partition and asset: each ``ASSET_MATERIALIZATION_PLANNED``
when the run is created, each ``ASSET_MATERIALIZATION`` when its step ends. A week's
hourly backfill (168 partitions x 4 assets) stores ~1,400 of them, and dagster-postgres
as configured by ``storage: postgres:`` stores each alone, over new connections
(``NullPool``: three per asset event - the insert, the asset index, a ``has_table``
look-up), ~10 ms each on the embedded server under load: ~40 s of a run whose SQL takes
~50 s (issue 15). Here:

- each process keeps one connection open per storage (event log, runs) and reuses it; a
  call made while it is in use (another thread) opens one more, closed after the call, as
  before. ``pool_pre_ping``: a connection the server dropped (restart, idle timeout) is
  replaced before use, not failed;
- Dagster's event batching is on (``DAGSTER_EVENT_BATCH_SIZE``, read by Dagster at every
  event; an operator's own value is kept): a step's materializations of a range run, and
  a new run's planned events, reach the storage together. dagster-postgres stores a batch
  of materializations with one insert and one index update; planned events it would
  still store one by one, each with its own commits, so ``store_event_batch`` here stores
  each unbroken run of them the same way as materializations: one insert, then the same
  index rows (tags, and each asset's ``asset_keys`` row as its last event leaves it) in one
  transaction. Other events in a batch are stored one by one, in order.

Everything else is dagster-postgres' own: same tables, same config (``postgres_url`` /
``postgres_db``, ``should_autocreate_tables``), same schedule storage; the webserver still
swaps in its own pool (``optimize_for_webserver``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from dagster import DagsterEventType
from dagster._core.storage.config import pg_config
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
from dagster_postgres import (
    DagsterPostgresStorage,
    PostgresEventLogStorage,
    PostgresRunStorage,
    PostgresScheduleStorage,
)
from dagster_postgres.utils import (
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)

if TYPE_CHECKING:
    from dagster._config.config_schema import UserConfigSchema
    from dagster._core.events.log import EventLogEntry
    from dagster._serdes import ConfigurableClassData
    from dagster_postgres.auth import PgTokenProvider

# One connection kept per storage and process; more only while it is busy, closed after.
POOL: dict[str, Any] = {
    "poolclass": sa.pool.QueuePool,
    "pool_size": 1,
    "max_overflow": -1,  # never wait for the kept connection: open another, as NullPool did
    "pool_pre_ping": True,
}
# Events per batch: a week of hourly partitions (168 per asset) is one batch per step.
EVENT_BATCH_ENV, EVENT_BATCH_SIZE = "DAGSTER_EVENT_BATCH_SIZE", 1000
_PLANNED = DagsterEventType.ASSET_MATERIALIZATION_PLANNED


def _pooled(
    storage: PostgresEventLogStorage | PostgresRunStorage, url: str, token: PgTokenProvider | None
) -> None:
    # The attribute dagster-postgres' own optimize_for_webserver replaces: every call of
    # the storage connects through it.
    storage._engine.dispose()
    storage._engine = create_pg_engine(url, token, isolation_level="AUTOCOMMIT", **POOL)


class PooledPostgresEventLogStorage(PostgresEventLogStorage):
    """dagster-postgres' event log over one kept connection, planned events batched."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: PgTokenProvider | None = None,
    ) -> None:
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)
        _pooled(self, postgres_url, token_provider)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        # Each unbroken run of planned materializations together (below), every other run
        # of events as dagster-postgres stores it (materializations: one insert), in order.
        for planned, group in itertools.groupby(
            events, key=lambda e: e.get_dagster_event().event_type == _PLANNED
        ):
            batch = list(group)
            if planned and len(batch) > 1:
                self._store_planned(batch)
            else:
                super().store_event_batch(batch)

    def _store_planned(self, events: list[EventLogEntry]) -> None:
        """What ``store_event`` does for each planned event, for all of them at once."""
        with self._connect() as conn:
            insert = self.prepare_insert_event_batch(events)
            ids = [
                int(row[0]) for row in conn.execute(insert.returning(SqlEventLogStorageTable.c.id))
            ]
        last: dict[str, tuple[EventLogEntry, int]] = {}  # asset -> its last event here
        for event, event_id in zip(events, ids, strict=True):
            last[event.get_dagster_event().asset_key.to_string()] = (event, event_id)
        with self.index_transaction() as conn:
            self._store_asset_event_tags(conn, events, ids)
            # Sequential upserts of an asset's row end as its last event leaves it.
            for event, event_id in last.values():
                self._store_asset_event(conn, event, event_id)


class PooledPostgresStorage(DagsterPostgresStorage):
    """``DagsterPostgresStorage`` with the pooled event log and run storage above."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: PgTokenProvider | None = None,
    ) -> None:
        # DagsterPostgresStorage.__init__ without building its NullPool event log first.
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        self._run_storage = PostgresRunStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        _pooled(self._run_storage, postgres_url, token_provider)
        self._event_log_storage = PooledPostgresEventLogStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        self._schedule_storage = PostgresScheduleStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        super(DagsterPostgresStorage, self).__init__()
        # Every process that stores events builds its instance (and so this storage) first.
        os.environ.setdefault(EVENT_BATCH_ENV, str(EVENT_BATCH_SIZE))

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
