"""warehouse.figures.table_rows, the one row count behind `status` and /api/etl/status:
exact when it can be, the planner's estimate when the count cannot finish in time."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from agg_pipeline.warehouse import figures


def test_exact_then_estimate_when_the_count_waits_then_missing_raises(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE ops.t_rows AS SELECT generate_series(1, 5000) AS n"))
        conn.execute(sa.text("ANALYZE ops.t_rows"))  # the planner's estimate: 5000
        conn.execute(sa.text("INSERT INTO ops.t_rows SELECT generate_series(1, 1000)"))
    with engine.connect() as conn:
        assert figures.table_rows(conn, "ops.t_rows", 5.0) == 6000
    with engine.connect() as locker, engine.connect() as conn:
        locker.execute(sa.text("LOCK TABLE ops.t_rows IN ACCESS EXCLUSIVE MODE"))
        # The count waits on the lock past its timeout: the estimate (from before the
        # insert, so it is told apart from the exact count); the connection stays usable.
        assert figures.table_rows(conn, "ops.t_rows", 0.2) == 5000
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
        locker.rollback()
    with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError):
        figures.table_rows(conn, "ops.no_such_table", 1.0)
