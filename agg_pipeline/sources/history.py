"""Import history that raw readings no longer hold: the old systems' aggregates.

Sources:

- the old ETL's tables, set aside by ``agg-pipeline migrate --adopt``:
  ``bi.hourly_sensor_agg_legacy``, ``bi.daily_sensor_agg_legacy`` (and a
  ``bi.weekly_sensor_agg_legacy`` if there is one); their ``sensor_id`` is resolved through
  the sensors table it references (``iot.sensors_legacy`` after an adopt) to a device code
  and a field (the old ``field`` column, else the sensor type's name in the catalogue);
- the old InfluxDB tasks' ``<bucket>_hourly`` / ``<bucket>_daily`` buckets (mean/min/max/
  count per sensor tag and field), through the official client (see ``import_influx``).

Rows land in the rollup tables with ``origin = 'imported'`` (migration 015): what the old system
did not keep (median, m2 when there is no spread, first/last reading) is NULL. Rows
computed from raw always win: an import never replaces a computed row (``ON CONFLICT ...
WHERE origin = 'imported'``), and a computation from raw replaces an imported row
(writers._merge_chunk). An imported row never feeds the level above. Invalid old rows
(count <= 0, a NULL or non-finite mean/min/max, min > mean or mean > max) and rows of
sensors that cannot be mapped are counted and named, never written. Re-running converges:
imported rows are refreshed from the source, computed rows stay.

Each month is written in one transaction holding the same (table, day) advisory locks as
the rollup assets, so an import never interleaves with a run writing the same days.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

from agg_pipeline.config.catalogue import Catalogue
from agg_pipeline.config.settings import get_settings
from agg_pipeline.influx import flux
from agg_pipeline.influx.client import InfluxError, InfluxResource
from agg_pipeline.warehouse.engine import WarehouseResource
from agg_pipeline.warehouse.migrate import LEGACY_SUFFIX, quote


@dataclass(frozen=True)
class Target:
    table: str
    key: str
    key_is_date: bool
    conditions: bool  # time_in_optimal_pct / time_in_critical_pct columns


TARGETS = [
    Target("bi.hourly_sensor_agg", "hour_start", False, False),
    Target("bi.daily_sensor_agg", "metric_date", True, True),
    Target("bi.weekly_sensor_agg", "week_start", True, False),
]

# Column spellings of the old systems, first match wins.
_ALIASES = {
    "mean": ("avg_value", "mean_value", "avg", "mean", "value"),
    "mn": ("min_value", "min"),
    "mx": ("max_value", "max"),
    "n": ("sample_count", "count", "reading_count", "samples"),
    "stddev": ("stddev_value", "stddev", "std_dev"),
    "median": ("median_value", "median"),
    "opt": ("time_in_optimal_pct",),
    "crit": ("time_in_critical_pct",),
}
_REQUIRED = ("mean", "mn", "mx", "n")


class HistoryError(RuntimeError):
    pass


@dataclass
class ImportReport:
    source: str
    counts: dict[str, Counter] = field(default_factory=dict)  # target -> outcome -> rows
    unmapped: set[str] = field(default_factory=set)  # old sensors without a (device, field)
    notes: list[str] = field(default_factory=list)

    def add(self, table: str, outcome: str, n: int) -> None:
        self.counts.setdefault(table, Counter())[outcome] += n

    def render(self, dry_run: bool = False) -> str:
        head = f"{self.source}" + (" (dry run: nothing written)" if dry_run else "")
        lines = [head]
        for table, c in self.counts.items():
            parts = ", ".join(f"{k} {v:,}" for k, v in sorted(c.items()))
            lines.append(f"  {table}: {parts}")
        if self.unmapped:
            lines.append(f"  unmapped old sensors (skipped): {', '.join(sorted(self.unmapped))}")
        lines.extend(f"  {n}" for n in self.notes)
        if not self.counts:
            lines.append("  nothing to import")
        return "\n".join(lines)


def _regclass(conn: sa.Connection, schema: str, name: str) -> int | None:
    return conn.execute(
        sa.text("SELECT CAST(to_regclass(:q) AS oid)"), {"q": f"{quote(schema)}.{quote(name)}"}
    ).scalar_one()


def _columns(conn: sa.Connection, oid: int) -> dict[str, str]:
    return dict(
        conn.execute(
            sa.text(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = :oid AND attnum > 0 AND NOT attisdropped"
            ),
            {"oid": oid},
        ).all()
    )


def _referenced(conn: sa.Connection, oid: int, column: str) -> int | None:
    """The table a foreign key on ``column`` of ``oid`` points at."""
    return conn.execute(
        sa.text(
            "SELECT c.confrelid FROM pg_constraint AS c JOIN pg_attribute AS a "
            "ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
            "WHERE c.contype = 'f' AND c.conrelid = :oid AND a.attname = :col "
            "AND array_length(c.conkey, 1) = 1 LIMIT 1"
        ),
        {"oid": oid, "col": column},
    ).scalar()


def _name(conn: sa.Connection, oid: int) -> str:
    schema, name = conn.execute(
        sa.text(
            "SELECT n.nspname, c.relname FROM pg_class AS c "
            "JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE c.oid = :oid"
        ),
        {"oid": oid},
    ).one()
    return f"{quote(schema)}.{quote(name)}"


def _first_present(cols: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in cols), None)


def _sensor_map_sql(conn: sa.Connection, legacy_oid: int) -> str:
    """SQL of (old_id, device, field) for every sensor the old rows may name."""
    sensors = _referenced(conn, legacy_oid, "sensor_id")
    if sensors is None:
        for candidate in (f"sensors{LEGACY_SUFFIX}", "sensors"):
            sensors = _regclass(conn, "iot", candidate)
            if sensors:
                break
    if not sensors:
        raise HistoryError("no sensors table found for the old rows' sensor_id")
    scols = _columns(conn, sensors)
    devices = _referenced(conn, sensors, "device_id") if "device_id" in scols else None
    if devices is None or "device_code" not in _columns(conn, devices):
        raise HistoryError(
            f"{_name(conn, sensors)}: no device_id referencing a table with device_code"
        )
    if "field" in scols:
        field_expr, type_join = "s.field", ""
    else:
        types = _referenced(conn, sensors, "sensor_type_id") if "sensor_type_id" in scols else None
        if types is None or "name" not in _columns(conn, types):
            raise HistoryError(
                f"{_name(conn, sensors)}: neither a field column nor a sensor_type_id "
                "referencing a table with name"
            )
        field_expr = "m.field"
        type_join = (
            f" JOIN {_name(conn, types)} AS t ON t.id = s.sensor_type_id "
            "LEFT JOIN unnest(CAST(:type_names AS text[]), CAST(:type_fields AS text[])) "
            "AS m (type_name, field) ON m.type_name = t.name"
        )
    return (
        f"SELECT s.id AS old_id, d.device_code AS device, {field_expr} AS field, "
        f"coalesce(s.sensor_code::text, d.device_code || ':' || s.id) AS old_name "
        f"FROM {_name(conn, sensors)} AS s JOIN {_name(conn, devices)} AS d "
        f"ON d.id = s.device_id{type_join}"
        if "sensor_code" in scols
        else f"SELECT s.id AS old_id, d.device_code AS device, {field_expr} AS field, "
        f"d.device_code || ':' || s.id AS old_name "
        f"FROM {_name(conn, sensors)} AS s JOIN {_name(conn, devices)} AS d "
        f"ON d.id = s.device_id{type_join}"
    )


def _key_expr(target: Target, typ: str, column: str) -> str:
    """The old key as our key type; a timestamp without zone is read as UTC (InfluxDB's)."""
    col = f"o.{quote(column)}"
    if target.key_is_date:
        return f"CAST({col} AS date)"
    if typ == "timestamp with time zone":
        return col
    return f"({col}::timestamp AT TIME ZONE 'UTC')"


def _legacy_frame(conn: sa.Connection, target: Target, catalogue: Catalogue) -> pd.DataFrame | None:
    schema, name = target.table.split(".")
    oid = _regclass(conn, schema, f"{name}{LEGACY_SUFFIX}")
    if oid is None:
        return None
    cols = _columns(conn, oid)
    picked = {k: _first_present(cols, v) for k, v in _ALIASES.items()}
    key_col = target.key if target.key in cols else None
    missing = [k for k in _REQUIRED if picked[k] is None] + ([] if key_col else [target.key])
    if "sensor_id" not in cols or missing:
        raise HistoryError(
            f"{schema}.{name}{LEGACY_SUFFIX}: no column for {', '.join(missing or ['sensor_id'])}"
        )
    select = ", ".join(
        ["o.sensor_id AS old_id", f"{_key_expr(target, cols[key_col], key_col)} AS bucket"]
        + [
            f"CAST(o.{quote(c)} AS double precision) AS {k}" if c else f"NULL::float8 AS {k}"
            for k, c in picked.items()
        ]
    )
    mapping = _sensor_map_sql(conn, oid)
    types = {s.sensor_type: f for f, s in catalogue.fields.items()}
    return pd.read_sql(
        sa.text(
            f"SELECT o2.*, sm.device, sm.field, sm.old_name FROM (SELECT {select} "
            f"FROM {_name(conn, oid)} AS o) AS o2 LEFT JOIN ({mapping}) AS sm "
            "ON sm.old_id = o2.old_id"
        ),
        conn,
        params={"type_names": list(types), "type_fields": list(types.values())},
    )


def _valid(frame: pd.DataFrame, target: Target) -> pd.Series:
    """Rows the rollups can hold and the checks accept: a key (a Monday for weeks), finite
    mean/min/max, a whole count >= 1, min <= mean <= max and a median, if any, within
    [min, max] (both within the float hair the checks allow), a spread >= 0."""
    cols = ["mean", "mn", "mx", "n", "median", "stddev"]
    v = frame[cols].apply(pd.to_numeric, errors="coerce").astype(float)
    eps = 1e-9 * np.maximum(np.maximum(v["mn"].abs(), v["mx"].abs()), 1e-300)
    ok = (
        np.isfinite(v[["mean", "mn", "mx", "n"]]).all(axis=1)
        & (v["n"] >= 1)
        & (v["n"] == np.floor(v["n"]))
        & (v["mn"] - eps <= v["mean"])
        & (v["mean"] <= v["mx"] + eps)
        & (v["median"].isna() | ((v["mn"] - eps <= v["median"]) & (v["median"] <= v["mx"] + eps)))
        & (v["stddev"].isna() | (v["stddev"] >= 0))
        & frame["bucket"].notna()
    )
    if target.key == "week_start":
        ok &= frame["bucket"].map(lambda d: d is not None and d.isoweekday() == 1).astype(bool)
    return ok.fillna(False).astype(bool)


def write_rows(
    engine: sa.Engine,
    catalogue: Catalogue,
    target: Target,
    frame: pd.DataFrame,
    report: ImportReport,
    dry_run: bool = False,
) -> None:
    """Validate, map and upsert one source's rows for ``target`` (columns: device, field,
    bucket, mean, mn, mx, n, stddev, median, opt, crit; old_name names a sensor)."""
    if frame.empty:
        return
    frame = frame.astype(object).where(frame.notna(), None)
    unmapped = frame[frame["device"].isna() | frame["field"].isna()]
    unknown_field = frame[~frame["field"].isin(list(catalogue.fields)) & frame["field"].notna()]
    report.unmapped |= {str(n) for n in unmapped["old_name"].fillna(unmapped["old_id"].astype(str))}
    report.unmapped |= {
        f"{d}:{f}" for d, f in zip(unknown_field["device"], unknown_field["field"], strict=True)
    }
    frame = frame[frame["field"].isin(list(catalogue.fields)) & frame["device"].notna()]
    if len(unmapped) + len(unknown_field):
        report.add(target.table, "unmapped", len(unmapped) + len(unknown_field))
    ok = _valid(frame, target)
    if (~ok).sum():
        report.add(target.table, "invalid", int((~ok).sum()))
    frame = frame[ok]
    if frame.empty:
        return
    if dry_run:
        report.add(target.table, "would_import", len(frame))
        return
    pairs = sorted(set(zip(frame["device"], frame["field"], strict=True)))
    WarehouseResource(
        database_url=engine.url.render_as_string(hide_password=False)
    ).register_sensors(catalogue, pairs)
    zone = get_settings().zone
    frame = frame.copy()
    if target.key_is_date:
        frame["day"] = [
            b if isinstance(b, date) else pd.Timestamp(b).date() for b in frame["bucket"]
        ]
        frame["month"] = [d.replace(day=1) for d in frame["day"]]
    else:
        frame["day"] = [pd.Timestamp(b).tz_convert(zone).date() for b in frame["bucket"]]
        frame["month"] = [d.replace(day=1) for d in frame["day"]]
    warehouse = WarehouseResource(database_url=engine.url.render_as_string(hide_password=False))
    for _, month in frame.groupby("month", sort=True):
        _upsert_month(warehouse, target, month, report)


def _upsert_month(
    warehouse: WarehouseResource, target: Target, month: pd.DataFrame, report: ImportReport
) -> None:
    key = quote(target.key)
    table = ".".join(quote(p) for p in target.table.split("."))
    extra_cols = ", time_in_optimal_pct, time_in_critical_pct" if target.conditions else ""
    extra_vals = ", i.opt, i.crit" if target.conditions else ""
    extra_set = (
        ", time_in_optimal_pct = EXCLUDED.time_in_optimal_pct, "
        "time_in_critical_pct = EXCLUDED.time_in_critical_pct"
        if target.conditions
        else ""
    )
    bucket_type = "date" if target.key_is_date else "timestamptz"

    def floats(col: str) -> list[float | None]:
        return [None if v is None else float(v) for v in month[col]]

    params = {
        "d": list(month["device"]),
        "f": list(month["field"]),
        "b": [
            b if target.key_is_date else pd.Timestamp(b).to_pydatetime() for b in month["bucket"]
        ],
        "mean": floats("mean"),
        "mn": floats("mn"),
        "mx": floats("mx"),
        "n": [int(v) for v in month["n"]],
        "sd": floats("stddev"),
        "med": floats("median"),
        "opt": floats("opt"),
        "crit": floats("crit"),
    }
    with warehouse.locked_transaction(target.table, sorted(set(month["day"]))) as conn:
        conn.execute(
            sa.text(
                "CREATE TEMP TABLE stage_import ON COMMIT DROP AS "
                "SELECT s.id AS sensor_id, u.b AS bucket, u.mean, u.mn, u.mx, u.n, u.sd, u.med, "
                "u.opt, u.crit FROM unnest(CAST(:d AS text[]), CAST(:f AS text[]), "
                f"CAST(:b AS {bucket_type}[]), CAST(:mean AS float8[]), CAST(:mn AS float8[]), "
                "CAST(:mx AS float8[]), CAST(:n AS bigint[]), CAST(:sd AS float8[]), "
                "CAST(:med AS float8[]), CAST(:opt AS float8[]), CAST(:crit AS float8[])) "
                "AS u (d, f, b, mean, mn, mx, n, sd, med, opt, crit) "
                "JOIN iot.devices AS dv ON dv.device_code = u.d "
                "JOIN iot.sensors AS s ON s.device_id = dv.id AND s.field = u.f"
            ),
            params,
        )
        duplicates = conn.execute(
            sa.text(
                "DELETE FROM stage_import AS a USING stage_import AS b "
                "WHERE a.sensor_id = b.sensor_id AND a.bucket = b.bucket AND a.ctid > b.ctid"
            )
        ).rowcount
        if duplicates:
            report.add(target.table, "duplicate_keys_skipped", duplicates)
        kept = conn.execute(
            sa.text(
                f"SELECT count(*) FROM stage_import AS i JOIN {table} AS t "
                f"ON t.sensor_id = i.sensor_id AND t.{key} = i.bucket WHERE t.origin = 'computed'"
            )
        ).scalar_one()
        written = conn.execute(
            sa.text(
                f"INSERT INTO {table} AS t (sensor_id, {key}, avg_value, min_value, max_value, "
                f"sample_count, stddev_value, median_value, m2, first_reading_at, "
                f"last_reading_at, origin{extra_cols}) "
                "SELECT i.sensor_id, i.bucket, i.mean, i.mn, i.mx, i.n, "
                "CASE WHEN i.n > 1 THEN i.sd END, i.med, "
                "CASE WHEN i.n = 1 THEN 0 WHEN i.sd IS NOT NULL THEN i.sd * i.sd * (i.n - 1) END, "
                f"NULL, NULL, 'imported'{extra_vals} FROM stage_import AS i "
                f"ON CONFLICT (sensor_id, {key}) DO UPDATE SET avg_value = EXCLUDED.avg_value, "
                "min_value = EXCLUDED.min_value, max_value = EXCLUDED.max_value, "
                "sample_count = EXCLUDED.sample_count, stddev_value = EXCLUDED.stddev_value, "
                "median_value = EXCLUDED.median_value, m2 = EXCLUDED.m2, "
                f"computed_at = now(){extra_set} WHERE t.origin = 'imported' AND "
                # Unchanged rows are left alone: a repeated import writes nothing.
                f"(t.avg_value, t.min_value, t.max_value, t.sample_count, t.stddev_value, "
                f"t.median_value, t.m2{extra_cols.replace(', ', ', t.')}) IS DISTINCT FROM "
                "(EXCLUDED.avg_value, EXCLUDED.min_value, EXCLUDED.max_value, "
                "EXCLUDED.sample_count, EXCLUDED.stddev_value, EXCLUDED.median_value, "
                f"EXCLUDED.m2{extra_cols.replace(', ', ', EXCLUDED.')})"
            )
        ).rowcount
        staged = conn.execute(sa.text("SELECT count(*) FROM stage_import")).scalar_one()
    report.add(target.table, "imported", written)
    if kept:
        # Rows computed from raw win: the old value for that (sensor, bucket) is not used.
        report.add(target.table, "kept_computed", kept)
    if staged - kept - written:
        report.add(target.table, "unchanged", staged - kept - written)


def import_legacy(engine: sa.Engine, catalogue: Catalogue, dry_run: bool = False) -> ImportReport:
    """The old ETL's ``bi.*_legacy`` rows into the rollups (see the module docstring)."""
    report = ImportReport("PostgreSQL bi.*_legacy tables (old ETL)")
    for target in TARGETS:
        with engine.connect() as conn:
            frame = _legacy_frame(conn, target, catalogue)
        if frame is None:
            continue
        report.add(target.table, "read", len(frame))
        write_rows(engine, catalogue, target, frame, report, dry_run)
    return report


def import_influx(
    engine: sa.Engine,
    catalogue: Catalogue,
    influx: InfluxResource,
    bucket: str,
    device_tag: str = "sensor_tag",
    measurement: str | None = None,
    dry_run: bool = False,
    stop: datetime | None = None,
) -> ImportReport:
    """The old InfluxDB tasks' ``<bucket>_hourly`` / ``<bucket>_daily`` buckets into the
    rollups. Each point is one statistic (tag ``stat_type``: mean, min, max, count) of one
    series (``device_tag``, ``_field``) and window; ``_time`` is the window's end, as
    ``aggregateWindow`` stamps it by default. Daily windows are the UTC days the old tasks
    used. A window without all four statistics is counted invalid (the old 1m/5m tasks
    wrote no count)."""
    report = ImportReport(f"InfluxDB {bucket}_hourly / {bucket}_daily (old tasks)")
    stop = stop or datetime.now(UTC)
    fields = list(catalogue.fields)
    for target, suffix, width in (
        (TARGETS[0], "_hourly", timedelta(hours=1)),
        (TARGETS[1], "_daily", timedelta(days=1)),
    ):
        query = flux.aggregate_history(
            f"{bucket}{suffix}", device_tag, fields, _INFLUX_EPOCH, stop, measurement
        )
        try:
            frames = influx.query_frames(query)
        except InfluxError as exc:
            if "could not find bucket" in str(exc):
                report.notes.append(f"{bucket}{suffix}: no such bucket, skipped")
                continue
            raise
        frame = _influx_frame(frames, device_tag, width, target.key_is_date)
        if frame is None:
            continue
        report.add(target.table, "read", len(frame))
        write_rows(engine, catalogue, target, frame, report, dry_run)
    return report


_INFLUX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STAT_COLUMNS = {"mean": "mean", "min": "mn", "max": "mx", "count": "n"}


def _influx_frame(
    frames: dict[str, pd.DataFrame], device_tag: str, width: timedelta, as_date: bool
) -> pd.DataFrame | None:
    key = [device_tag, "_field", "_time"]
    parts = []
    for stat, column in _STAT_COLUMNS.items():
        f = frames.get(stat)
        if f is None or f.empty:
            continue
        parts.append(f[key + ["_value"]].drop_duplicates(key, keep="last").set_index(key)
                     ["_value"].astype(float).rename(column))  # fmt: skip
    if not parts:
        return None
    wide = pd.concat(parts, axis=1).reset_index()
    for column in _STAT_COLUMNS.values():
        if column not in wide:
            wide[column] = None
    start = pd.to_datetime(wide["_time"], utc=True) - width
    return pd.DataFrame(
        {
            "old_id": wide[device_tag] + ":" + wide["_field"],
            "old_name": wide[device_tag] + ":" + wide["_field"],
            "device": wide[device_tag],
            "field": wide["_field"],
            "bucket": [t.date() for t in start] if as_date else list(start),
            "mean": wide["mean"],
            "mn": wide["mn"],
            "mx": wide["mx"],
            "n": wide["n"],
            "stddev": None,
            "median": None,
            "opt": None,
            "crit": None,
        }
    )
