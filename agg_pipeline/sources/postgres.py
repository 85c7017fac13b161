"""Raw readings in a PostgreSQL table of the warehouse (``raw.readings`` or the catalogue's
own table): the questions of ``sources.base`` answered in SQL, where the rows are."""

from __future__ import annotations

import hashlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime

import sqlalchemy as sa

from agg_pipeline.config.catalogue import Catalogue
from agg_pipeline.core.conditions import ConditionBand
from agg_pipeline.core.windows import Window
from agg_pipeline.sources.base import StageContext
from agg_pipeline.warehouse import statements, versions
from agg_pipeline.warehouse.engine import set_lock_timeout

_PLANNER = (
    # The planner cannot estimate how many (device, field, bucket) groups a window has, nor
    # how large an array_agg state grows, and picks a sort-based plan: measured 15.0 s vs
    # 5.8 s for a day of 8.5M readings. Sorts the statement really needs (the time order
    # for held durations) still happen. SET LOCAL: reset at the end of the transaction.
    "SELECT set_config('enable_sort', 'off', true)",
)


def _stage(
    conn: sa.Connection,
    engine: sa.Engine,
    name: str,
    select_sql: str,
    params: dict,
    shards: int,
    work_mem: str,
    device_column: str,
) -> None:
    """Materialize ``select_sql`` as the temp table ``name`` of ``conn``'s transaction.

    With ``shards`` > 1 the statement runs in that many connections at once, each over
    the devices whose name hashes to its shard, into an UNLOGGED staging table; the temp
    table is then filled from it. The per-group work (de-duplication, binning, medians)
    runs after PostgreSQL's own parallel aggregation, in one process: sharding is what
    puts every core on it (measured on 2 cores: 8.5 s -> 4.9 s for a day's 1m pass).
    The caller already holds its advisory locks, so the shards read what every earlier
    writer of the same window committed.
    """
    if shards <= 1:
        conn.execute(sa.text(_PLANNER[0]))
        sql = select_sql.replace("{shard}", "TRUE")
        conn.execute(sa.text(f"CREATE TEMP TABLE {name} ON COMMIT DROP AS {sql}"), params)
        conn.execute(sa.text("SELECT set_config('enable_sort', 'on', true)"))
        return

    # A device's shard: its name's hash, non-negative (abs() of INT_MIN would overflow).
    sharded = select_sql.replace(
        "{shard}", f"(hashtext(r.{device_column}::text) & 2147483647) % :shards = :shard"
    )
    # The staging table's columns are the statement's: named after a hash of its text, so
    # a changed statement gets a fresh table (and an old one is simply left unused).
    digest = hashlib.sha1(select_sql.encode()).hexdigest()[:10]
    staging = f"ops.staging_{name}_{digest}"
    with engine.begin() as ddl:
        set_lock_timeout(ddl)
        ddl.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:t))"), {"t": staging})
        ddl.execute(
            sa.text(
                f"CREATE UNLOGGED TABLE IF NOT EXISTS {staging} AS SELECT NULL::text AS batch, "
                f"now() AS staged_at, q.* FROM ({sharded}) AS q WITH NO DATA"
            ),
            {**params, "shards": shards, "shard": 0},
        )
    batch = uuid.uuid4().hex

    def run(shard: int) -> None:
        with engine.begin() as worker:
            worker.execute(sa.text("SELECT set_config('work_mem', :v, true)"), {"v": work_mem})
            set_lock_timeout(worker)
            worker.execute(sa.text(_PLANNER[0]))
            # One process per shard: the shards are the parallelism.
            worker.execute(
                sa.text("SELECT set_config('max_parallel_workers_per_gather', '0', true)")
            )
            worker.execute(
                sa.text(f"INSERT INTO {staging} SELECT :batch, now(), q.* FROM ({sharded}) AS q"),
                {**params, "shards": shards, "shard": shard, "batch": batch},
            )

    try:
        with ThreadPoolExecutor(max_workers=shards, thread_name_prefix="stage") as pool:
            for future in [pool.submit(run, k) for k in range(shards)]:
                future.result()
        conn.execute(
            sa.text(
                f"CREATE TEMP TABLE {name} ON COMMIT DROP AS "
                f"SELECT q.* FROM {staging} AS q WHERE q.batch = :batch"
            ),
            {"batch": batch},
        )
        conn.execute(sa.text(f"ALTER TABLE {name} DROP COLUMN batch, DROP COLUMN staged_at"))
    finally:
        with engine.begin() as cleanup:
            cleanup.execute(sa.text(f"DELETE FROM {staging} WHERE batch = :b"), {"b": batch})


# The (device, field, hour) groups holding a minute the plain path could not prove free
# of duplicates.
_REDO_HOURS = """
SELECT DISTINCT device, field, date_bin('1 hour', window_start, :origin) AS hour
FROM stage_1m WHERE kind = 'minute' AND NOT clean
"""
_RESTRICT = (
    "(r.{device}::text, r.{field}::text, date_bin('1 hour', r.{time}, :origin)) IN ("
    "SELECT * FROM unnest(CAST(:redo_device AS text[]), CAST(:redo_field AS text[]), "
    "CAST(:redo_hour AS timestamptz[])))"
)
# Every row of those groups (minutes, hour median, rejects: each carries its minute or
# hour in window_start) goes; the exact pass's rows for them come in.
_DROP_HOURS = """
DELETE FROM stage_1m AS st
USING unnest(CAST(:redo_device AS text[]), CAST(:redo_field AS text[]),
             CAST(:redo_hour AS timestamptz[])) AS redo (device, field, hour)
WHERE st.device = redo.device AND st.field = redo.field
  AND date_bin('1 hour', st.window_start, :origin) = redo.hour
"""
_ADD_EXACT = """
INSERT INTO stage_1m (device, field, known, kind, window_start, sample_count, mean_value,
                      min_value, max_value, m2, first_reading_at, last_reading_at, duplicate,
                      raw_rows, unknown_field, future, "null", nan, inf, out_of_bounds,
                      bad_device, median_value, clean, hour_rows, times, vals)
SELECT device, field, known, kind, window_start, sample_count, mean_value, min_value,
       max_value, m2, first_reading_at, last_reading_at, duplicate, raw_rows, unknown_field,
       future, "null", nan, inf, out_of_bounds, bad_device, median_value, TRUE, hour_rows,
       times, vals
FROM stage_1m_exact
"""


# Whether bi.hour_values may stand for raw over [start, end): the hours that are stale (no
# readings_1m version, or raw changed after it was computed); whether the change log holds
# a change to the window not yet folded into raw's versions (the healer drains it each
# tick); and the hours whose kept raw row count differs from what raw holds now for the
# catalogue's fields (per hour, so that a surplus in one hour cannot hide a shortfall in
# another).
_HOURS_CURRENT = """
SELECT
    (SELECT count(*)
     FROM generate_series(CAST(:start AS timestamptz), CAST(:end AS timestamptz)
                          - interval '1 hour', interval '1 hour') AS h (t)
     LEFT JOIN ops.partition_versions AS m ON m.asset = :minutes AND m.partition_start = h.t
     LEFT JOIN ops.partition_versions AS r ON r.asset = :raw AND r.partition_start = h.t
     WHERE m.computed_from IS NULL OR r.version > m.computed_from) AS stale_hours,
    EXISTS (SELECT 1 FROM raw.readings_change_log
            WHERE bucket_start >= :start AND bucket_start < :end) AS undrained,
    (SELECT count(*) FROM (
        SELECT x.hour FROM (
            SELECT hour_start AS hour, raw_rows AS kept, 0::bigint AS raw
            FROM bi.hour_values WHERE hour_start >= :start AND hour_start < :end
            UNION ALL
            SELECT date_bin('1 hour', r.{time}, CAST(:start AS timestamptz)), 0, count(*)
            FROM {raw_table} AS r
            WHERE r.{time} >= :start AND r.{time} < :end
              AND r.{field} = ANY (CAST(:fields AS text[]))
            GROUP BY 1
        ) AS x
        GROUP BY x.hour HAVING sum(x.kept) <> sum(x.raw)
    ) AS d) AS uneven_hours
"""


def _on_hour(t: datetime) -> bool:
    return t.timestamp() % 3600 == 0


# The hour row's raw row count and its valid, de-duplicated readings in time order
# (stage_partials_1m.sql; written to bi.hour_values), or NULLs when none are kept.
# hour_rows leaves out the rows rejected as future: raw then holds more than the hour
# values stand for, and the levels above read raw (where they may be valid by then).
_HOUR_VALUES = (
    "(SELECT count(*) FROM unnest(g.ts) AS f (t) WHERE f.t <= :latest_allowed), "
    "array_agg(d.t ORDER BY d.t), array_agg(d.v ORDER BY d.t)"
)
_NO_HOUR_VALUES = "NULL::bigint, NULL::timestamptz[], NULL::float8[]"

# stage_daily.sql and stage_daily_hours.sql read their readings differently (raw, or the
# hour values) but aggregate them the same way; these fragments are that shared part.
# {daily_totals}: per (device, field, day) group, the totals over its rows z (the median
# only when :with_medians). {reading_terms}: per reading of the row alias {r}, whether it
# is optimal / critical under band k and how long it holds ({after}: the reading after
# it, NULL after the day's last; least() skips it). Continuation lines are indented as in
# the files, so that the statement text is what it was when the block was written there.
_DAILY_TOTALS = """count(*) AS reading_count,
           CASE WHEN :with_medians
                THEN percentile_cont(0.5) WITHIN GROUP (ORDER BY z.v) END AS median,
           count(*) FILTER (WHERE z.optimal) AS optimal_count,
           count(*) FILTER (WHERE z.critical) AS critical_count,
           coalesce(sum(z.held), 0) AS covered_seconds,
           coalesce(sum(z.held) FILTER (WHERE z.optimal), 0) AS optimal_seconds,
           coalesce(sum(z.held) FILTER (WHERE z.critical), 0) AS critical_seconds,
           min(z.t) AS first_reading_at,
           max(z.t) AS last_reading_at"""
_READING_TERMS = """{r}.v >= k.opt_min AND {r}.v <= k.opt_max AS optimal,
               {r}.v < k.crit_below OR {r}.v > k.crit_above AS critical,
               CASE WHEN k.field IS NOT NULL THEN extract(epoch FROM least(
                   {after},
                   {r}.t + make_interval(secs => :max_gap_seconds),
                   ((g.day + 1)::timestamp AT TIME ZONE :tz)
               ) - {r}.t) END AS held"""
# Per path: the statement, its reading rows' alias and the reading after each one (raw
# sorts the day; the hour values carry it, see stage_daily_hours.sql).
_DAILY = {
    "raw": ("stage_daily", "d", "lead(d.t) OVER (ORDER BY d.t)"),
    "hour_values": ("stage_daily_hours", "x", "x.t_next"),
}

# The groups CTE of stage_daily_hours.sql and stage_medians_hours.sql: per (device, field,
# sensor, {bucket}) the hours of bi.hour_values to read, named as raw's columns are
# ({device} / {time}) so that _stage's {shard} (a hash of r.{device}) applies here too.
# {bucket} is an expression of r.{time} (the hour's start: an hour lies in one bucket, as a
# zone whose days do not start on a UTC hour never gets here), {fields} the fields to read.
_HOUR_GROUPS = """groups AS (
    SELECT r.{device}::text AS device,
           r.hv_field AS field,
           r.hv_sensor AS sensor_id,
           {bucket} AS {bucket_name},
           array_agg(r.{time}) AS hours
    FROM (
        SELECT dv.device_code AS {device}, s.field AS hv_field, hv.sensor_id AS hv_sensor,
               hv.hour_start AS {time}
        FROM bi.hour_values AS hv
        JOIN iot.sensors AS s ON s.id = hv.sensor_id
        JOIN iot.devices AS dv ON dv.id = s.device_id
        WHERE hv.hour_start >= :start AND hv.hour_start < :end
    ) AS r
    WHERE {shard}
      AND r.hv_field = ANY ({fields})
    GROUP BY 1, 2, 3, 4
)"""
# stage_daily's fields: the catalogue's, or only those with a band when no medians are due.
_DAILY_FIELDS = """CASE WHEN :with_medians THEN CAST(:fields AS text[])
                              ELSE CAST(:cond_field AS text[]) END"""


class PostgresReadingsSource:
    """Raw readings in a PostgreSQL table of the warehouse database (the catalogue's source)."""

    def __init__(
        self,
        catalogue: Catalogue,
        engine: sa.Engine,
        shards: int,
        work_mem: str,
        plain_1m: bool = False,
        hour_values: bool = True,
    ) -> None:
        src = catalogue.source
        self.catalogue = catalogue
        self.plain_1m = plain_1m
        # Keep each hour's readings for the levels above (the plain path keeps none).
        self.hour_values = hour_values and not plain_1m
        self.engine = engine
        self.shards = shards
        self.work_mem = work_mem
        self.columns = statements.RawColumns.of(
            src.table, src.time_column, src.device_column, src.field_column, src.value_column
        )

    def _render(self, name: str, **fragments: str) -> str:
        # {shard} is left for _stage to fill.
        return statements.render(name, shard="{shard}", **fragments, **self.columns.as_dict())

    def _hour_groups(self, bucket: str, bucket_name: str, fields: str) -> str:
        # {shard} is left for _stage to fill, as in _render.
        return _HOUR_GROUPS.format(
            bucket=bucket,
            bucket_name=bucket_name,
            fields=fields,
            shard="{shard}",
            **self.columns.as_dict(),
        )

    def _stage(self, conn: sa.Connection, name: str, sql: str, params: dict) -> None:
        _stage(
            conn,
            self.engine,
            name,
            sql,
            params,
            self.shards,
            self.work_mem,
            self.columns.device,
        )

    def _common(self, window: Window, ctx: StageContext) -> dict:
        return {
            **self.catalogue.bounds_arrays(),
            "start": window.start,
            "end": window.end,
            "origin": window.start,
            "latest_allowed": ctx.latest_allowed,
            "tz": ctx.timezone,
            **statements.name_params(),
        }

    def stage_partials_1m(self, conn: sa.Connection, window: Window, ctx: StageContext) -> str:
        """Fill ``stage_1m``; return the path taken: ``exact`` (every hour through the
        de-duplicating pass), ``plain`` (one plain GROUP BY, no duplicates possible) or
        ``plain+exact:N`` (plain, then the N (device, field, hour) groups the plain pass
        could not prove duplicate-free re-staged exactly)."""
        params = self._common(window, ctx)
        if not self.plain_1m:
            sql = self._render(
                "stage_partials_1m",
                restrict="TRUE",
                hour_values=_HOUR_VALUES if self.hour_values else _NO_HOUR_VALUES,
            )
            self._stage(conn, "stage_1m", sql, params)
            return "exact"
        self._stage(conn, "stage_1m", self._render("stage_partials_1m_plain"), params)
        redo = conn.execute(sa.text(_REDO_HOURS), {"origin": window.start}).all()
        if not redo:
            return "plain"
        # Duplicates (or readings too close to tell apart) in these hours: their rows come
        # from the exact pass instead, over just those hours.
        exact = self._render(
            "stage_partials_1m",
            restrict=_RESTRICT.format(**self.columns.as_dict()),
            hour_values=_NO_HOUR_VALUES,
        )
        redo_params = {
            "origin": window.start,
            "redo_device": [r[0] for r in redo],
            "redo_field": [r[1] for r in redo],
            "redo_hour": [r[2] for r in redo],
        }
        self._stage(conn, "stage_1m_exact", exact, {**params, **redo_params})
        conn.execute(sa.text(_DROP_HOURS), redo_params)
        conn.execute(sa.text(_ADD_EXACT))
        return f"plain+exact:{len(redo)}"

    def hours_current(self, conn: sa.Connection, window: Window) -> bool:
        """Whether ``bi.hour_values`` holds exactly what raw holds for ``window``, so the
        levels above may read it instead of raw: every hour of the window has a
        readings_1m version computed after raw's latest change to that hour (versions.py),
        the change log holds no change to the window that is not in those versions yet,
        and every hour's raw rows (those not rejected as future when it was computed) are
        as many as raw holds there now (a write to a table without the change-log trigger,
        a reading that was in the future then, or an hour whose every reading was rejected
        sends the window to raw). Hours are UTC hours: a window that does not
        start and end on one (a zone offset of :30) always reads raw."""
        if not self.hour_values or not (_on_hour(window.start) and _on_hour(window.end)):
            return False
        stale, undrained, uneven = conn.execute(
            sa.text(_HOURS_CURRENT.format(**self.columns.as_dict())),
            {
                "start": window.start,
                "end": window.end,
                "fields": list(self.catalogue.fields),
                "raw": versions.RAW,
                "minutes": "readings_1m",
            },
        ).one()
        return stale == 0 and not undrained and uneven == 0

    def stage_medians(
        self, conn: sa.Connection, window: Window, grain: str, ctx: StageContext
    ) -> str:
        bucket = statements.bucket_expression(grain, self.columns.time)
        path = "hour_values" if self.hours_current(conn, window) else "raw"
        if path == "hour_values":
            groups = self._hour_groups(bucket, "bucket", "CAST(:fields AS text[])")
            sql = self._render("stage_medians_hours", hour_groups=groups)
        else:
            sql = self._render("stage_medians", bucket=bucket)
        self._stage(conn, "stage_medians", sql, self._common(window, ctx))
        return path

    def stage_daily(
        self,
        conn: sa.Connection,
        window: Window,
        bands: dict[tuple[date, str], ConditionBand],
        ctx: StageContext,
        with_medians: bool,
        with_conditions: bool,
    ) -> str:
        keys = sorted(bands) if with_conditions else []
        params = {
            **self._common(window, ctx),
            "max_gap_seconds": ctx.max_gap_seconds,
            "with_medians": with_medians,
            "with_conditions": with_conditions,
            "cond_day": [k[0] for k in keys],
            "cond_field": [k[1] for k in keys],
            "cond_opt_min": [bands[k].optimal_min for k in keys],
            "cond_opt_max": [bands[k].optimal_max for k in keys],
            "cond_crit_below": [bands[k].critical_below for k in keys],
            "cond_crit_above": [bands[k].critical_above for k in keys],
        }
        path = "hour_values" if self.hours_current(conn, window) else "raw"
        name, row, after = _DAILY[path]
        fragments = {
            "daily_totals": _DAILY_TOTALS,
            "reading_terms": _READING_TERMS.format(r=row, after=after),
        }
        if path == "hour_values":
            day = statements.bucket_expression("day", self.columns.time)
            fragments["hour_groups"] = self._hour_groups(day, "day", _DAILY_FIELDS)
        sql = self._render(name, **fragments)
        self._stage(conn, "stage_daily", sql, params)
        return path
