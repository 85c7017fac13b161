"""Raw readings in InfluxDB 2.x: the same questions as the PostgreSQL source, in Flux.

Each staging call sends Flux that aggregates inside InfluxDB (``influx/flux.py``); the
aggregated rows are loaded into the same temp tables the PostgreSQL source fills
(``stage_1m``, ``stage_daily``, ``stage_medians``), so every writer works unchanged.

Differences from the PostgreSQL source, by the nature of InfluxDB:
- a point with the same series and time overwrites the earlier one: no duplicates to
  merge. The device tag, the catalogue's ``source.tags`` and the field identify a series:
  each tag set of the listed tags is aggregated on its own, as its own device
  (``influx/series.py``); if an unlisted tag splits one device's field into several
  series, staging stops with an error naming it and the setting;
- NaN and infinity cannot be stored in InfluxDB; values outside a field's bounds are
  excluded and counted (``out_of_bounds``); fields not in the catalogue are not read;
- points stamped after ``latest_allowed`` are outside the query range (not counted).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa

from agg_pipeline.config.catalogue import Catalogue, InfluxSource
from agg_pipeline.core.conditions import ConditionBand
from agg_pipeline.core.windows import Window
from agg_pipeline.influx import flux, series
from agg_pipeline.influx.client import InfluxError, InfluxResource
from agg_pipeline.sources.base import StageContext
from agg_pipeline.warehouse import statements

STAGE_1M_COLUMNS = {
    "device": "text", "field": "text", "known": "boolean", "kind": "text",
    "window_start": "timestamptz", "sample_count": "bigint", "mean_value": "float8",
    "min_value": "float8", "max_value": "float8", "m2": "float8",
    "first_reading_at": "timestamptz", "last_reading_at": "timestamptz",
    "duplicate": "bigint", "raw_rows": "bigint", "unknown_field": "bigint", "future": "bigint",
    "null": "bigint", "nan": "bigint", "inf": "bigint", "out_of_bounds": "bigint",
    "bad_device": "bigint", "median_value": "float8",
}  # fmt: skip
STAGE_DAILY_COLUMNS = {
    "device": "text", "field": "text", "day": "date", "opt_min": "float8", "opt_max": "float8",
    "crit_below": "float8", "crit_above": "float8", "reading_count": "bigint",
    "median": "float8", "optimal_count": "bigint", "critical_count": "bigint",
    "covered_seconds": "float8", "optimal_seconds": "float8", "critical_seconds": "float8",
    "first_reading_at": "timestamptz", "last_reading_at": "timestamptz",
}  # fmt: skip
STAGE_MEDIANS_COLUMNS = {
    "device": "text", "field": "text", "bucket": "date", "n": "bigint", "median": "float8",
}  # fmt: skip
_ONE_US = timedelta(microseconds=1)


def load_frame(
    conn: sa.Connection, name: str, columns: dict[str, str], frame: pd.DataFrame
) -> None:
    """Create temp table ``name`` (dropped at commit) and COPY ``frame``'s columns into it."""
    ddl = ", ".join(f'"{c}" {t}' for c, t in columns.items())
    conn.execute(sa.text(f"CREATE TEMP TABLE {name} ({ddl}) ON COMMIT DROP"))
    if frame.empty:
        return
    out = frame.reindex(columns=list(columns))
    for c, t in columns.items():
        if t == "timestamptz":
            out[c] = pd.to_datetime(out[c], utc=True).dt.strftime("%Y-%m-%d %H:%M:%S.%f+00")
        elif t == "bigint":
            out[c] = out[c].astype("Int64")
    buf = io.StringIO()
    out.to_csv(buf, header=False, index=False, na_rep="\\N")
    buf.seek(0)
    cols = ", ".join(f'"{c}"' for c in columns)
    with conn.connection.dbapi_connection.cursor() as cur:
        cur.copy_expert(f"COPY {name} ({cols}) FROM STDIN WITH (FORMAT csv, NULL '\\N')", buf)


def _empty(*columns: str) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})


def _bad_devices(frame: pd.DataFrame) -> pd.Series:
    """Rows (aggregated series, not readings) whose device tag breaks the naming rule."""
    if frame.empty or "device" not in frame:
        return pd.Series(False, index=frame.index)
    return frame["device"].astype(str).map(statements.is_bad_name).astype(bool)


def _without_bad_devices(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[~_bad_devices(frame)]


class InfluxReadingsSource:
    def __init__(self, catalogue: Catalogue, influx: InfluxResource) -> None:
        if not isinstance(catalogue.source, InfluxSource):
            raise TypeError("InfluxReadingsSource needs an influxdb catalogue source")
        if not influx.enabled:
            raise InfluxError(
                f"catalogue {catalogue.name!r} reads from {catalogue.source.describe()}, but "
                "InfluxDB is not configured: set INFLUXDB_URL, INFLUXDB_TOKEN and INFLUXDB_ORG"
            )
        self.catalogue = catalogue
        self.source = catalogue.source
        self.influx = influx
        self.bounds = {n: (f.min, f.max) for n, f in catalogue.fields.items()}

    def _frames(self, query: str) -> dict[str, pd.DataFrame]:
        frames = self.influx.query_frames(query)
        tag = self.source.device_tag
        for name, frame in frames.items():
            if tag not in frame:
                raise InfluxError(
                    f"InfluxDB answered without the device tag {tag!r} (result {name!r}): "
                    f"check catalogue source.device_tag (columns: {', '.join(frame.columns)})"
                )
            frame["device"] = self._device_codes(frame)
            if "_field" in frame:
                frame["field"] = frame["_field"].astype(str)
        return frames

    def _device_codes(self, frame: pd.DataFrame) -> pd.Series:
        """The device tag's values, or with carried tags the tag sets' device codes
        (``influx/series.py``): composed once per distinct tag set, not per row."""
        tag = self.source.device_tag
        if not self.source.tags:
            return frame[tag].astype(str)
        cols = [tag, *(t for t in self.source.tags if t in frame)]
        keys = frame[cols].fillna("").astype(str)  # a block without the tag: not carried
        distinct = keys.drop_duplicates()
        codes = [
            series.compose(row[0], dict(zip(cols[1:], row[1:], strict=True)))
            for row in distinct.itertuples(index=False)
        ]
        lookup = pd.Series(codes, index=pd.MultiIndex.from_frame(distinct))
        return pd.Series(
            lookup.reindex(pd.MultiIndex.from_frame(keys)).to_numpy(), index=frame.index
        )

    def _one_series_per_key(self, frame: pd.DataFrame, keys: list[str]) -> None:
        dup = frame.duplicated(keys, keep=False)
        if dup.any():
            candidates = [
                c for c in frame.columns
                if not c.startswith("_") and c not in (*keys, "device", "field", "result",
                                                       "table", self.source.device_tag)
            ]  # fmt: skip
            # The tags that do split them: more than one value within a duplicated key.
            clash = frame[dup]
            other = [c for c in candidates if (clash.groupby(keys)[c].nunique() > 1).any()]
            raise InfluxError(
                f"several series share device tag {self.source.device_tag!r} and field "
                f"(e.g. {frame.loc[dup, keys].iloc[0].to_dict()}); tags {other} split them. "
                "List them in the catalogue's source.tags to aggregate each tag set on its "
                "own and carry the tags to the sink (as the old tasks' aggregateWindow did), "
                "or filter the extra tag in the source"
            )

    # ---------------------------------------------------------------------------- 1m
    def stage_partials_1m(self, conn: sa.Connection, window: Window, ctx: StageContext) -> None:
        stop = min(window.end, ctx.latest_allowed + _ONE_US)
        if stop <= window.start:
            load_frame(conn, "stage_1m", STAGE_1M_COLUMNS, _empty())
            return
        offset = timedelta(seconds=int(window.start.timestamp()) % 3600)
        f = self._frames(flux.partials_1m(
            self.source.bucket, self.source.measurement, self.bounds, window.start, stop, offset
        ))  # fmt: skip
        keys = ["device", "field", "window_start"]

        def part(
            name: str, column: str, time_col: str = "_time", value: str = "_value"
        ) -> pd.DataFrame:
            frame = f.get(name, _empty("device", "field", time_col, value))
            return frame.rename(columns={time_col: "window_start", value: column})[keys + [column]]

        if "count" in f:  # on the answer itself: it names the tags that split a series
            self._one_series_per_key(f["count"].rename(columns={"_time": "window_start"}), keys)
        minutes = part("count", "sample_count")
        for name, column in (("mean", "mean_value"), ("min", "min_value"),
                             ("max", "max_value"), ("stddev", "stddev")):  # fmt: skip
            minutes = minutes.merge(part(name, column), on=keys, how="left")
        minutes = minutes.merge(part("first", "first_reading_at", "_start", "_time"), on=keys,
                                how="left")  # fmt: skip
        minutes = minutes.merge(part("last", "last_reading_at", "_start", "_time"), on=keys,
                                how="left")  # fmt: skip
        n = minutes["sample_count"].astype("int64")
        # Flux's stddev is the sample one: M2 = stddev^2 * (n - 1).
        minutes["m2"] = (minutes["stddev"].astype(float) ** 2 * (n - 1)).where(n > 1, 0.0)
        minutes = minutes.assign(kind="minute", known=True, duplicate=0)

        hours = part("hour_median", "median_value")
        if not minutes.empty:
            start = minutes["window_start"] - offset
            hour_n = (
                minutes.assign(window_start=start.dt.floor("1h") + offset)
                .groupby(["device", "field", "window_start"])["sample_count"]
                .sum()
                .reset_index()
            )
            hours = hours.merge(hour_n, on=keys, how="left")
        hours = hours.assign(kind="hour", known=True)

        rows = f.get("rows", _empty("device", "field", "_value"))
        valid = minutes.groupby(["device", "field"])["sample_count"].sum().rename("valid")
        rejects = rows.rename(columns={"_value": "raw_rows"})[["device", "field", "raw_rows"]]
        rejects = rejects.groupby(["device", "field"], as_index=False)["raw_rows"].sum()
        rejects = rejects.merge(valid.reset_index(), on=["device", "field"], how="left")
        rejects["out_of_bounds"] = rejects["raw_rows"] - rejects["valid"].fillna(0)
        rejects = rejects.assign(kind="rejects", known=True, unknown_field=0, future=0,
                                 null=0, nan=0, inf=0)  # fmt: skip
        stage = pd.concat(
            [x for x in (minutes, hours, rejects) if not x.empty] or [_empty()],
            ignore_index=True,
        )
        bad = _bad_devices(stage)
        if bad.any():
            # A series under a bad device name: all its points count as `bad_device`, and
            # only its rejects row is kept, with a name the temp table can store (no NUL).
            rej = stage[bad & (stage["kind"] == "rejects")].copy()
            rej["bad_device"], rej["out_of_bounds"] = rej["raw_rows"], 0
            rej["device"] = rej["device"].str.replace("\x00", "\\x00", regex=False)
            stage = pd.concat([stage[~bad], rej], ignore_index=True)
        load_frame(conn, "stage_1m", STAGE_1M_COLUMNS, stage)

    # ------------------------------------------------------------------------- daily
    def _periods(
        self, window: Window, zone: str, grain: str
    ) -> Iterator[tuple[date, datetime, datetime]]:
        """(first local date, start, end) of each local day / Monday week / month in the
        window."""
        tz = ZoneInfo(zone)
        day = window.start.astimezone(tz).date()
        if grain == "week":
            day -= timedelta(days=day.weekday())
        if grain == "month":
            day = day.replace(day=1)
        while True:
            start = datetime.combine(day, datetime.min.time(), tz)
            if start >= window.end:
                return
            if grain == "month":
                following = (day + timedelta(days=32)).replace(day=1)
            else:
                following = day + timedelta(days=7 if grain == "week" else 1)
            end = datetime.combine(following, datetime.min.time(), tz)
            yield day, max(start, window.start), min(end, window.end)
            day = following

    def _summary(
        self,
        start: datetime,
        stop: datetime,
        bands: dict[str, tuple[float, float, float, float]],
        ctx: StageContext,
        with_medians: bool,
    ) -> dict[str, pd.DataFrame]:
        if min(stop, ctx.latest_allowed + _ONE_US) <= start:
            return {}
        return self._frames(flux.period_summary(
            self.source.bucket, self.source.measurement, self.source.device_tag, self.bounds,
            bands, start, stop, ctx.latest_allowed, ctx.max_gap_seconds, with_medians,
            self.source.tags,
        ))  # fmt: skip

    def stage_daily(
        self,
        conn: sa.Connection,
        window: Window,
        bands: dict[tuple[date, str], ConditionBand],
        ctx: StageContext,
        with_medians: bool,
        with_conditions: bool,
    ) -> None:
        # Bands can differ from day to day (crop stages): one query per local day.
        frames = []
        for day, start, stop in self._periods(window, ctx.timezone, "day"):
            day_bands = {
                f: (b.optimal_min, b.optimal_max, b.critical_below, b.critical_above)
                for (d, f), b in sorted(bands.items())
                if d == day and with_conditions and f in self.bounds
            }
            if not with_medians and not day_bands:
                continue
            f = self._summary(start, stop, day_bands, ctx, with_medians)
            frames.append(self._daily_rows(day, f, day_bands, with_medians))
        stage = pd.concat(frames, ignore_index=True) if frames else _empty()
        load_frame(conn, "stage_daily", STAGE_DAILY_COLUMNS, _without_bad_devices(stage))

    def _daily_rows(
        self,
        day: date,
        f: dict[str, pd.DataFrame],
        bands: dict[str, tuple[float, float, float, float]],
        with_medians: bool,
    ) -> pd.DataFrame:
        keys = ["device", "field"]
        classes = f.get("classes", _empty("device", "field", "class", "n", "held"))
        if with_medians:
            out = f.get("count", _empty("device", "field", "_value"))
            self._one_series_per_key(out, keys)
            out = out.rename(columns={"_value": "reading_count"})[keys + ["reading_count"]]
            med = f.get("median", _empty("device", "field", "_value"))
            out = out.merge(med.rename(columns={"_value": "median"})[keys + ["median"]],
                            on=keys, how="left")  # fmt: skip
        else:
            out = classes.groupby(keys, as_index=False)["n"].sum()
            out = out.rename(columns={"n": "reading_count"})
            out["median"] = None
        out = out.assign(day=day)
        index = pd.MultiIndex.from_frame(out[keys])

        def per(cls: str | None, column: str, fill: float) -> object:
            sub = classes if cls is None else classes[classes["class"] == cls]
            return sub.groupby(keys)[column].sum().reindex(index).fillna(fill).to_numpy()

        for i, name in enumerate(("opt_min", "opt_max", "crit_below", "crit_above")):
            out[name] = [bands[fd][i] if fd in bands else None for fd in out["field"]]
        out["optimal_count"] = per("optimal", "n", 0)
        out["critical_count"] = per("critical", "n", 0)
        out["covered_seconds"] = per(None, "held", 0.0)
        out["optimal_seconds"] = per("optimal", "held", 0.0)
        out["critical_seconds"] = per("critical", "held", 0.0)
        return out[out["reading_count"] > 0]

    # ---------------------------------------------------------------- weekly, monthly
    def stage_medians(
        self, conn: sa.Connection, window: Window, grain: str, ctx: StageContext
    ) -> None:
        if grain not in ("day", "week", "month"):
            raise ValueError(f"the InfluxDB source stages day, week or month medians: {grain!r}")
        frames = []
        for first_day, start, stop in self._periods(window, ctx.timezone, grain):
            f = self._summary(start, stop, {}, ctx, True)
            if "count" not in f:
                continue
            counts = f["count"].rename(columns={"_value": "n"})[["device", "field", "n"]]
            med = f["median"].rename(columns={"_value": "median"})[["device", "field", "median"]]
            frames.append(counts.merge(med, on=["device", "field"]).assign(bucket=first_day))
        stage = pd.concat(frames, ignore_index=True) if frames else _empty()
        load_frame(conn, "stage_medians", STAGE_MEDIANS_COLUMNS, _without_bad_devices(stage))
