"""Data-quality checks, evaluated by each asset right after it writes its window.

Checks are declared as ``check_specs`` on the assets and yielded from the same step, over
exactly the window the run wrote - every partition of a multi-partition backfill run is
covered, and the metadata names the partitions that failed. (Dagster's partitioned asset
checks are a preview that only records single-partition steps, which would leave our
single-run backfills unchecked.)

- ``*_valid`` (blocking): min <= mean <= max, count > 0, spread >= 0, median within
  [min, max], no duplicate keys. Blocking: downstream assets in the same run do not run,
  and automation waits, while it fails.
- ``matches_<level below>`` (blocking): the hierarchy adds up - counts sum, minima and maxima
  agree with the level the rows were merged from.
- ``coverage`` (WARN): share of expected readings present, below
  ``AGG_PIPELINE_COVERAGE_WARN_PCT``.
- ``consistent_with_parents`` (``consistency.CHECKED``: every rollup level not written
  for open windows, from the hierarchy; not blocking): the partitions
  written, inside the healing window, against their parents *as they are now*
  (``consistency.py``: count sums, min / max, a day's valid raw count, NULL medians raw
  could fill) and not stale by data version (nor any ancestor partition they cover).
  A partition that disagrees is flagged stale in ``ops.partition_versions``, so the healer
  recomputes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
import sqlalchemy as sa

from agg_pipeline.config.catalogue import get_catalogue
from agg_pipeline.config.settings import get_settings
from agg_pipeline.core import clock, hierarchy
from agg_pipeline.core.windows import Window
from agg_pipeline.defs import partitions
from agg_pipeline.warehouse import consistency, healing, levels, quality


@dataclass(frozen=True)
class Level:
    asset: str
    table: str
    key: str
    key_is_date: bool
    mean: str
    below: tuple[str, str, str] | None  # (table, key, bucket expression of that key)


def _from_hierarchy(level: hierarchy.Level) -> Level:
    below = None
    if level.parent is not None and level.parent != hierarchy.RAW.key:
        parent = hierarchy.parent_of(level)
        key = parent.bucket_column
        below = (parent.table, key, levels.bucket_sql(level, f"b.{key}"))
    return Level(
        level.asset, level.table, level.bucket_column, level.key_is_date, level.mean_column, below
    )


LEVELS = {level.asset: _from_hierarchy(level) for level in hierarchy.DERIVED}


def check_specs(asset: str, coverage: bool = False) -> list[dg.AssetCheckSpec]:
    level = LEVELS[asset]
    specs = [
        dg.AssetCheckSpec(
            "stats_valid",
            asset=asset,
            blocking=True,
            description="min <= mean <= max, count > 0, spread >= 0, median in [min, max], "
            "one row per key - for every partition the run wrote.",
        )
    ]
    if level.below:
        specs.append(
            dg.AssetCheckSpec(
                f"matches_{level.below[0].split('.')[1]}",
                asset=asset,
                blocking=True,
                description=f"Counts, minima and maxima add up to {level.below[0]}.",
            )
        )
    if asset in consistency.CHECKED:
        specs.append(
            dg.AssetCheckSpec(
                CONSISTENT,
                asset=asset,
                description="The partitions written (inside the healing window) agree with "
                "their parents as they are now - count sums, min / max, a day's valid raw "
                "count, no NULL median raw could fill - and none of them, nor an ancestor "
                "partition they cover, is stale by data version. A disagreeing partition is "
                "marked stale: self_healing_sensor recomputes it.",
            )
        )
    if coverage:
        specs.append(
            dg.AssetCheckSpec(
                "coverage",
                asset=asset,
                description="Share of expected readings present (WARN below the setting).",
            )
        )
    return specs


CONSISTENT = "consistent_with_parents"


def _ancestors(asset: str) -> set[str]:
    out, todo = set(), [asset]
    while todo:
        node = healing.BASE.by_asset.get(todo.pop())
        for p in node.parents if node else ():
            if p not in out and p in healing.BASE.by_asset:
                out.add(p)
                todo.append(p)
    return out


def consistent_with_parents(engine: sa.Engine, asset: str, window: Window) -> dg.AssetCheckResult:
    """``CONSISTENT`` over the part of ``window`` inside the healing window (older history
    may have lost its lower levels to retention: not compared); flags what disagrees."""
    settings, catalogue = get_settings(), get_catalogue()
    zone, now = settings.zone, clock.now()
    origin = partitions.hourly.start_time_for_partition_key(
        partitions.hourly.get_first_partition_key()
    )
    lo = max(window.start, healing.window_start(now, settings))
    if lo >= window.end:
        return dg.AssetCheckResult(
            asset_key=asset,
            check_name=CONSISTENT,
            passed=True,
            metadata={"compared": "nothing: the window is older than the healing window"},
        )
    inside = Window(lo, window.end)
    raw = (
        (catalogue.source.table, catalogue.source.time_column)
        if catalogue.raw_in_postgres
        else None
    )
    bounds = consistency.params(
        lo, window.end, origin, zone, settings.timezone, settings.median_max_readings
    )
    with engine.begin() as conn:
        found = consistency.find(conn, bounds, raw, settings, (asset,))
        starts = sorted({f.start(zone) for f in found})
        consistency.clear(conn, asset, inside, starts)
        consistency.flag(conn, asset, starts)  # the healer recomputes them
        vs = healing.Versions.load(conn, lo, healing.BASE)
    judged = {asset} | _ancestors(asset)
    stale = [
        s
        # The readings' nodes suffice: every asset judged is a level or one of its parents.
        for s in healing.find_stale(vs, now, settings, origin, healing.BASE)
        if s.asset in judged and inside.start <= s.start < inside.end
    ]
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=CONSISTENT,
        passed=not found and not stale,
        metadata={
            "compared_window": str(inside),
            "mismatches": [f"{f.what}: {f.bucket} ({f.sensors} sensors)" for f in found][:20],
            "partitions_flagged_stale": len(starts),
            # Parents changed after this run read them (or theirs did): recomputed next.
            "stale_by_version": [f"{s.asset} {s.start.isoformat()} ({s.reason})" for s in stale][
                :20
            ],
        },
    )


def _bounds(level: Level, window: Window, tz: str) -> dict:
    if level.key_is_date:
        from zoneinfo import ZoneInfo

        zone = ZoneInfo(tz)
        return {
            "lo": window.start.astimezone(zone).date(),
            "hi": window.end.astimezone(zone).date(),
            "origin": window.start,
            "tz": tz,
            "start": window.start,
            "end": window.end,
        }
    return {
        "lo": window.start,
        "hi": window.end,
        "origin": window.start,
        "tz": tz,
        "start": window.start,
        "end": window.end,
    }


def _stats_valid(conn: sa.Connection, level: Level, params: dict) -> dg.AssetCheckResult:
    bad, total = quality.invalid_buckets(conn, hierarchy.BY_ASSET[level.asset], params)
    return dg.AssetCheckResult(
        asset_key=level.asset,
        check_name="stats_valid",
        passed=not bad,
        metadata={
            "rows_checked": total,
            "one_row_per_key": "primary key",
            "failing_buckets": [f"{b} ({n} rows)" for b, n in bad],
        },
    )


def _matches_below(conn: sa.Connection, level: Level, params: dict) -> dg.AssetCheckResult:
    assert level.below is not None
    rows = quality.mismatches_below(conn, hierarchy.BY_ASSET[level.asset], params)
    # Rows whose source level was since removed by retention cannot be compared: they are
    # reported, not failed.
    mismatched = [f"{b} ({n} series)" for b, gone, n in rows if not gone]
    gone = sum(n for _, g, n in rows if g)
    return dg.AssetCheckResult(
        asset_key=level.asset,
        check_name=f"matches_{level.below[0].split('.')[1]}",
        passed=not mismatched,
        metadata={
            "mismatched_buckets": mismatched[:20],
            "rows_whose_source_is_no_longer_retained": gone,
        },
    )


def coverage_result(
    conn: sa.Connection,
    asset: str,
    table: str,
    key: str,
    window: Window,
    interval_s: float,
    warn_pct: float,
) -> dg.AssetCheckResult:
    """Valid readings present / expected, for the sensors active in the last day.

    Expected = elapsed part of the window / the catalogue's sample interval, per sensor that
    reported anything in the 24 hours before the window's end (a device retired last week
    is not expected).
    """
    now = datetime.now(UTC)
    elapsed = (min(window.end, now) - window.start).total_seconds()
    present, sensors = quality.coverage_counts(conn, table, key, window.start, window.end)
    expected = sensors * max(elapsed, 0) / interval_s
    pct = 100.0 * float(present) / expected if expected > 0 else None
    passed = pct is None or pct >= warn_pct
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name="coverage",
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "coverage_pct": round(pct, 2) if pct is not None else None,
            "readings_present": int(present),
            "readings_expected": round(expected, 1),
            "active_sensors": int(sensors),
            "warn_below_pct": warn_pct,
        },
    )


def evaluate(
    engine: sa.Engine, asset: str, window: Window, tz: str
) -> Iterator[dg.AssetCheckResult]:
    level = LEVELS[asset]
    params = _bounds(level, window, tz)
    with engine.connect() as conn:
        written = hierarchy.BY_ASSET[asset]
        if written.closed_windows_only and written.step is not None:
            # An open window is not written yet (writers._closed_part): compare only the
            # closed ones (with the level below).
            closed = quality.closed_window_start(conn, written.step, window.start)
            params["hi"] = params["end"] = max(window.start, min(window.end, closed))
        yield _stats_valid(conn, level, params)
        if level.below:
            yield _matches_below(conn, level, params)
    if asset in consistency.CHECKED:
        yield consistent_with_parents(engine, asset, window)
