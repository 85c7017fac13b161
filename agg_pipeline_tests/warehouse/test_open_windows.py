"""The newest minutes: an open 1-minute or 5-minute window is never written as if final,
and a closed one is exact as soon as the schedule's next tick ran."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import sqlalchemy as sa

from agg_pipeline.config.catalogue import load_catalogue
from agg_pipeline.defs import automation
from agg_pipeline.defs.assets import readings_1m, readings_5m
from agg_pipeline_tests import data, reference
from agg_pipeline_tests.warehouse.test_rollups import run_partition

CATALOGUE = load_catalogue("hydroponics")


def _floor(t: datetime, minutes: int) -> datetime:
    return t.replace(second=0, microsecond=0) - timedelta(minutes=t.minute % minutes)


def test_open_windows_wait_and_closed_ones_are_exact(warehouse_url, engine):
    now = datetime.now(UTC)
    if now.second > 45:  # keep the run inside this minute
        time.sleep(60 - now.second + 1)
        now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    if now.minute == 0:  # no closed minute yet in this hour
        time.sleep(60 - now.second + 1)
        now = datetime.now(UTC)
    # Readings every 5 s from the start of the hour up to now.
    rows, t = [], hour
    while t <= now:
        rows.append((t, "arduino_001", "temperature", 20 + (t.second % 13) / 10))
        t += timedelta(seconds=5)
    data.insert(engine, rows)

    key = automation.settling_hour(now + timedelta(minutes=1))  # the tick at the next minute
    assert key == hour.strftime("%Y-%m-%d-%H:00")
    result = run_partition(warehouse_url, [readings_1m, readings_5m], key)
    assert result.success

    with engine.connect() as conn:
        minutes = dict(
            conn.execute(sa.text("SELECT window_start, sample_count FROM bi.readings_1m")).all()
        )
        fives = dict(
            conn.execute(sa.text("SELECT window_start, sample_count FROM bi.readings_5m")).all()
        )
    open_minute, open_five = _floor(now, 1), _floor(now, 5)
    assert open_minute not in minutes and max(minutes) == open_minute - timedelta(minutes=1)
    assert open_five not in fives  # (in the first 5 minutes of an hour there is none yet)
    # Every closed window equals pandas over raw.
    raw = reference.load_raw(engine, hour, open_minute)
    valid = reference.valid_readings(raw, CATALOGUE, datetime.now(UTC))
    expected_1m = valid.groupby(valid["time"].dt.floor("1min")).size().to_dict()
    assert minutes == {k.to_pydatetime(): v for k, v in expected_1m.items()}
    closed5 = valid[valid["time"] < open_five]
    expected_5m = closed5.groupby(closed5["time"].dt.floor("5min")).size().to_dict()
    assert fives == {k.to_pydatetime(): v for k, v in expected_5m.items()}


def test_the_5m_schedule_runs_1m_first_in_the_same_run():
    from agg_pipeline.definitions import defs

    job = defs.resolve_job_def("refresh_5m_open_hour")
    assert job.asset_layer.executable_asset_keys == {
        dg.AssetKey("readings_1m"),
        dg.AssetKey("readings_5m"),
    }
