"""An independent computation of every number agg_pipeline writes, with pandas.

It reads the raw rows and applies the documented rules directly (validity, duplicates,
grouping, medians, condition shares), sharing no code with the SQL under test.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import sqlalchemy as sa

from agg_pipeline.config.catalogue import Catalogue


def load_raw(engine: sa.Engine, start: datetime, end: datetime) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(
            sa.text(
                "SELECT time, device, field, value, value IS NULL AS is_null FROM raw.readings "
                "WHERE time >= :s AND time < :e"
            ),
            conn,
            params={"s": start, "e": end},
        )


MAX_NAME_BYTES = 200  # the documented device-name limit (README), restated on purpose


def bad_device(raw: pd.DataFrame) -> pd.Series:
    """Device name empty, longer than MAX_NAME_BYTES (UTF-8) or with control characters."""
    size = raw["device"].map(lambda d: len(d.encode("utf-8")))
    control = raw["device"].str.contains(r"[\x00-\x1f\x7f]", regex=True)
    return (size < 1) | (size > MAX_NAME_BYTES) | control


def valid_readings(raw: pd.DataFrame, catalogue: Catalogue, latest: datetime) -> pd.DataFrame:
    """Valid rows, duplicates collapsed to one reading (their mean)."""
    lo = raw["field"].map({k: v.min for k, v in catalogue.fields.items()})
    hi = raw["field"].map({k: v.max for k, v in catalogue.fields.items()})
    v = raw["value"].astype(float)
    ok = (
        ~bad_device(raw)
        & raw["field"].isin(list(catalogue.fields))
        & (raw["time"] <= pd.Timestamp(latest))
        & v.notna()
        & np.isfinite(v)
        & (v >= lo)
        & (v <= hi)
    )
    good = raw[ok]
    return good.groupby(["device", "field", "time"], as_index=False)["value"].mean()


def rejected_by_reason(raw: pd.DataFrame, catalogue: Catalogue, latest: datetime) -> dict:
    bad = bad_device(raw)
    known = ~bad & raw["field"].isin(list(catalogue.fields))
    future = known & (raw["time"] > pd.Timestamp(latest))
    rest = known & ~future
    v = raw["value"].astype(float)
    # pandas reads NULL and NaN both as NaN; the query tells them apart.
    null = rest & raw["is_null"]
    nan = rest & v.isna() & ~raw["is_null"]
    inf = rest & np.isinf(v)
    lo = raw["field"].map({k: s.min for k, s in catalogue.fields.items()})
    hi = raw["field"].map({k: s.max for k, s in catalogue.fields.items()})
    oob = rest & v.notna() & np.isfinite(v) & ((v < lo) | (v > hi))
    valid = rest & ~(null | nan | inf | oob)
    dup = int(valid.sum()) - len(raw[valid].drop_duplicates(["device", "field", "time"]))
    return {
        "bad_device": int(bad.sum()),
        "unknown_field": int((~bad & ~known).sum()),
        "future": int(future.sum()),
        "null": int(null.sum()),
        "nan": int(nan.sum()),
        "inf": int(inf.sum()),
        "out_of_bounds": int(oob.sum()),
        "duplicate": dup,
    }


def grouped_stats(readings: pd.DataFrame, bucket: pd.Series) -> pd.DataFrame:
    """count, mean, min, max, sample stddev, median per (device, field, bucket)."""
    frame = readings.assign(bucket=bucket)
    g = frame.groupby(["device", "field", "bucket"])["value"]
    out = g.agg(["count", "mean", "min", "max", "median"])
    out["std"] = g.std(ddof=1)
    return out.reset_index()


def local_day(times: pd.Series, zone: str) -> pd.Series:
    return times.dt.tz_convert(ZoneInfo(zone)).dt.date


def conditions(
    readings: pd.DataFrame,
    bands: dict[str, tuple[float, float, float, float]],
    zone: str,
    max_gap_seconds: float,
) -> pd.DataFrame:
    """Per (device, field, local day): shares by count and time-weighted.

    ``bands[field] = (optimal_min, optimal_max, critical_below, critical_above)``.
    """
    rows = []
    frame = readings[readings["field"].isin(list(bands))].copy()
    frame["day"] = local_day(frame["time"], zone)
    tz = ZoneInfo(zone)
    for (device, field, day), grp in frame.groupby(["device", "field", "day"]):
        grp = grp.sort_values("time")
        omin, omax, cb, ca = bands[field]
        v = grp["value"].to_numpy()
        optimal = (v >= omin) & (v <= omax)
        critical = (v < cb) | (v > ca)
        epoch = pd.Timestamp("1970-01-01", tz="UTC")
        t = (grp["time"] - epoch).dt.total_seconds().to_numpy()
        day_end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
        nxt = np.append(t[1:], (pd.Timestamp(day_end) - epoch).total_seconds())
        held = nxt - t
        held = np.minimum(held, max_gap_seconds)
        covered = held.sum()
        rows.append(
            {
                "device": device,
                "field": field,
                "day": day,
                "reading_count": len(v),
                "optimal_pct_by_count": 100.0 * optimal.sum() / len(v),
                "critical_pct_by_count": 100.0 * critical.sum() / len(v),
                "time_in_optimal_pct": 100.0 * held[optimal].sum() / covered,
                "time_in_critical_pct": 100.0 * held[critical].sum() / covered,
                "covered_seconds": covered,
            }
        )
    return pd.DataFrame(rows)
