"""An independent computation of the event rollups, with pandas, from the raw events.

It applies the documented rules (README, "Event metrics") directly: the earliest row of an
id counts, events more than the future tolerance ahead are out, then the shipped
catalogue's reject rules; figures per workspace and bucket with pandas' own statistics
(``quantile`` with linear interpolation is ``percentile_cont``). Shares no code with the
SQL under test.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

STATUSES = ("success", "failed", "cancelled")
TOLERANCE = timedelta(seconds=300)  # AGG_PIPELINE_FUTURE_TOLERANCE_SECONDS default


def load(engine: sa.Engine, table: str) -> pd.DataFrame:
    """All raw rows of ``table`` (duplicates may sit outside a window); float columns also
    say which were NULL (pandas reads NULL and NaN alike). In stored order (ctid)."""
    floats = {"raw.executions": ("duration_ms", "credits"), "raw.credit_usage": ("credits",)}
    flags = "".join(f", {c} IS NULL AS {c}_null" for c in floats.get(table, ()))
    with engine.connect() as conn:
        return pd.read_sql(
            sa.text(f"SELECT *{flags} FROM {table} ORDER BY ctid"),
            conn,
        ).pipe(lambda df: df.assign(time=pd.to_datetime(df["time"], utc=True)))


def _nonfinite(df: pd.DataFrame, col: str) -> pd.Series:
    v = df[col].astype(float)
    return (v.isna() & ~df[f"{col}_null"]) | np.isinf(v)


def judge(df: pd.DataFrame, table: str, now: datetime) -> pd.Series:
    """The reason each row is rejected for ('' for a good one), first rule wins."""
    reason = pd.Series("", index=df.index, dtype=object)

    def mark(mask: pd.Series, name: str) -> None:
        reason[(reason == "") & mask.fillna(False).astype(bool)] = name

    if "id" in df:
        order = df.reset_index().sort_values(["time", "index"], kind="stable")
        dup = order["id"].notna() & order.duplicated("id", keep="first")
        mark(pd.Series(dup.values, index=order["index"].values).reindex(df.index), "duplicate")
    mark(df["time"] > pd.Timestamp(now + TOLERANCE), "future")
    mark(df["workspace_id"].isna(), "null_workspace")
    if table == "raw.executions":
        mark(~df["status"].isin(STATUSES), "unknown_status")
        mark(_nonfinite(df, "duration_ms"), "nan_duration")
        mark(df["duration_ms"] < 0, "negative_duration")
        mark(_nonfinite(df, "credits"), "nan_credits")
    else:
        mark(df["user_id"].isna(), "null_user")
        if table == "raw.credit_usage":
            mark(_nonfinite(df, "credits"), "nan_credits")
    return reason


def bucket(times: pd.Series, grain: str, zone: str) -> pd.Series:
    if grain == "hourly":
        return times.dt.floor("h")
    local = times.dt.tz_convert(zone)
    day = local.dt.date
    if grain == "daily":
        return day
    if grain == "weekly":
        return (local.dt.normalize() - pd.to_timedelta(local.dt.day_of_week, unit="D")).dt.date
    return day.map(lambda d: d.replace(day=1))


def executions(good: pd.DataFrame, grain: str, zone: str) -> pd.DataFrame:
    df = good.assign(bucket=bucket(good["time"], grain, zone))
    rows = []
    for (ws, b), g in df.groupby(["workspace_id", "bucket"]):
        d = g["duration_ms"].dropna()
        n = len(g)
        ok = int((g["status"] == "success").sum())
        rows.append(
            {
                "workspace_id": ws,
                "bucket": b,
                "execution_count": n,
                "success_count": ok,
                "failed_count": int((g["status"] == "failed").sum()),
                "cancelled_count": int((g["status"] == "cancelled").sum()),
                "success_rate_pct": 100.0 * ok / n,
                "avg_duration_ms": d.mean() if len(d) else None,
                "min_duration_ms": d.min() if len(d) else None,
                "max_duration_ms": d.max() if len(d) else None,
                "p50_duration_ms": d.quantile(0.5) if len(d) else None,
                "p95_duration_ms": d.quantile(0.95) if len(d) else None,
                "credits_used": float(g["credits"].fillna(0).sum()),
                "distinct_users": int(g["user_id"].nunique()),
            }
        )
    return pd.DataFrame(rows)


def user_activity(good: pd.DataFrame, grain: str, zone: str) -> pd.DataFrame:
    df = good.assign(bucket=bucket(good["time"], grain, zone), hour=good["time"].dt.floor("h"))
    out = (
        df.groupby(["workspace_id", "user_id", "bucket"])
        .agg(
            event_count=("action", "size"),
            distinct_actions=("action", "nunique"),
            active_hours=("hour", "nunique"),
        )
        .reset_index()
    )
    return out if grain == "daily" else out.drop(columns="active_hours")


def credit_consumption(good: pd.DataFrame, grain: str, zone: str) -> pd.DataFrame:
    df = good.assign(bucket=bucket(good["time"], grain, zone))
    return (
        df.groupby(["workspace_id", "user_id", "bucket"])
        .agg(credits=("credits", "sum"), event_count=("credits", "size"))
        .reset_index()
    )
