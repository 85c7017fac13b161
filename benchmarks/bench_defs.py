"""Dagster definitions used only by the benchmark (`python -m benchmarks.bench`).

- ``old_way_hourly``: what the replaced ETL did, one run per hourly partition: pull the
  hour's raw rows into pandas, aggregate in Python (validity and duplicates handled the
  same way, so the comparison is like for like), upsert the hourly rows.
- ``trivial_hourly``: an asset that does nothing, over 90 days of hourly partitions with
  the pipeline's backfill policy, to measure Dagster's per-partition bookkeeping.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import sqlalchemy as sa

from agg_pipeline.config.catalogue import get_catalogue
from agg_pipeline.defs.loaded import SETTINGS
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.warehouse.engine import WarehouseResource

_start = SETTINGS.start_date
hourly = dg.HourlyPartitionsDefinition(start_date=f"{_start:%Y-%m-%d}-00:00", end_offset=1)
_trivial_start = (datetime.now(UTC) - timedelta(days=90)).replace(minute=0, second=0, microsecond=0)
trivial_partitions = dg.HourlyPartitionsDefinition(
    start_date=_trivial_start.strftime("%Y-%m-%d-%H:%M")
)

_UPSERT = """
INSERT INTO ops.bench_old_way_hourly AS t
    (device, field, hour_start, sample_count, avg_value, min_value, max_value,
     stddev_value, median_value)
VALUES (:device, :field, :hour_start, :n, :avg, :min, :max, :std, :median)
ON CONFLICT (device, field, hour_start) DO UPDATE SET
    sample_count = EXCLUDED.sample_count, avg_value = EXCLUDED.avg_value,
    min_value = EXCLUDED.min_value, max_value = EXCLUDED.max_value,
    stddev_value = EXCLUDED.stddev_value, median_value = EXCLUDED.median_value
"""


@dg.asset(partitions_def=hourly)
def old_way_hourly(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> None:
    window = context.partition_time_window
    catalogue = get_catalogue()
    engine = warehouse.get_engine()
    with engine.connect() as conn:
        raw = pd.read_sql(
            sa.text(
                "SELECT time, device, field, value FROM raw.readings WHERE time >= :s AND time < :e"
            ),
            conn,
            params={"s": window.start, "e": window.end},
        )
    lo = raw["field"].map({k: f.min for k, f in catalogue.fields.items()})
    hi = raw["field"].map({k: f.max for k, f in catalogue.fields.items()})
    v = raw["value"].astype(float)
    ok = raw["field"].isin(list(catalogue.fields)) & np.isfinite(v) & (v >= lo) & (v <= hi)
    valid = raw[ok].groupby(["device", "field", "time"], as_index=False)["value"].mean()
    g = valid.groupby(["device", "field"])["value"]
    stats = g.agg(["count", "mean", "min", "max", "std", "median"]).reset_index()
    rows = [
        {
            "device": r.device,
            "field": r.field,
            "hour_start": window.start,
            "n": int(r["count"]),
            "avg": r["mean"],
            "min": r["min"],
            "max": r["max"],
            "std": None if pd.isna(r["std"]) else r["std"],
            "median": r["median"],
        }
        for _, r in stats.iterrows()
    ]
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE IF NOT EXISTS ops.bench_old_way_hourly (device text, field text, "
                "hour_start timestamptz, sample_count bigint, avg_value float8, "
                "min_value float8, max_value float8, stddev_value float8, median_value float8, "
                "PRIMARY KEY (device, field, hour_start))"
            )
        )
        if rows:
            conn.execute(sa.text(_UPSERT), rows)
    context.add_output_metadata({"raw_rows": len(raw), "rows_upserted": len(rows)})


@dg.asset(partitions_def=trivial_partitions, backfill_policy=dg.BackfillPolicy.single_run())
def trivial_hourly() -> None:
    """Does nothing: what remains of a run is Dagster's own bookkeeping."""


defs = dg.Definitions(
    assets=[old_way_hourly, trivial_hourly],
    resources={
        "warehouse": WarehouseResource(database_url=dg.EnvVar("DATABASE_URL")),
        "influx": InfluxResource(),
    },
    executor=dg.in_process_executor,
)
